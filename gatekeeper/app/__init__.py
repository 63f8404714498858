"""The wiring: the only package that sees the whole state.

``state`` holds ``AppState`` (private to this package: features receive the
small Protocols they declare), ``wiring`` builds it and the proxy app with its
background loops, ``process`` runs the listeners, drains and stops. Nothing
imports this package except ``cli``.
"""
