"""The built-in alerts: rules evaluated in process, delivered, exported for Prometheus.

``rules`` is the pure evaluator (Prometheus semantics), ``inputs`` the signals
it reads, ``loop`` the evaluation loop, ``notify`` delivery to receivers,
``promrules`` the same rules as a Prometheus rule file.
"""
