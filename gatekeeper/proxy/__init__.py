"""The HTTP engine of the public listener: a request adapted, planned, relayed.

``handler`` carries out ``core.plan`` and hands the outcomes that belong to a
feature (queue routes, the jobs API, Gradio, the status path) to the handlers
the app registered (``handler.Features``); ``admit`` runs an admit route;
``relay`` moves the bytes; ``spool`` takes a body before admission;
``respond``/``responses`` are gatekeeper's own answers; ``connections`` guards
the listener; ``record``/``accesslog`` tell each request once. What it needs
from the rest of the process arrives as the small Protocols of ``ports``.
"""
