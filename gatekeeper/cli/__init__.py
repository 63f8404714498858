"""The ``gatekeeper`` command: the parser (``main``) and each command's entry.

``status``/``status_view`` read and render a running gatekeeper's status;
``demo`` runs the demo; ``procs`` starts and stops child processes (the demo,
bench and tests share it); ``output`` handles a closed stdout.
"""
