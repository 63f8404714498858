"""The small error hierarchy of gatekeeper.

Every error that reaches the HTTP edge carries what the edge needs to answer:
a status, a machine-readable reason code and a human message. The proxy turns
an ``HttpError`` into a JSON body ``{"detail", "reason", ...}`` plus the
``X-Gatekeeper-Reason`` header; it never has to inspect the exception type.

    GatekeeperError
    └── HttpError                    answered by gatekeeper itself
        ├── BadRequest       400     absolute-form target; a malformed Prefer or
        │                            Idempotency-Key (bad_header); a Gradio join
        │                            body that is not one (bad_gradio_request)
        ├── MethodNotAllowed 405     CONNECT: gatekeeper is never an open proxy
        ├── ClientTimeout    408     the client paused its upload past limits.client_body_timeout
        ├── BodyTooLarge     413     request body over limits.max_body_bytes
        └── UpstreamError            the engine failed us
            ├── UpstreamUnavailable  502  upstream_unavailable (connect failed, or
            │   │                          the connection broke before a response)
            │   └── UpstreamProtocolError  502  upstream_unavailable, kind protocol (the
            │       │                           connection broke or spoke nonsense before
            │       │                           a complete head; a Gradio join's answer)
            │       └── UpstreamDropped   502  the engine closed or reset the connection
            │                                   before its head (its process died?)
            ├── UpstreamBusy         503  upstream_busy (no free pool connection in time)
            └── UpstreamTimeout      504  upstream_timeout (no byte within the read timeout,
                                          or a request write stalled past the write timeout)

An invalid rules file is ``gatekeeper.config.ConfigError``, defined with the config
(the layer below this one). Admission rejections are not exceptions: they are
values produced by the pure decision core (``admission.Rejection``), because
rejecting is the normal, expected fast path, not an error.
"""

from __future__ import annotations

from gatekeeper.core.vocab import ErrorKind


class GatekeeperError(Exception):
    """Base of every error gatekeeper raises on purpose."""


class HttpError(GatekeeperError):
    """An error gatekeeper answers itself, with a status and a reason code."""

    status: int = 500
    reason: str = "internal"

    def __init__(self, detail: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason


class BadRequest(HttpError):
    status = 400
    reason = "bad_request"


class MethodNotAllowed(HttpError):
    status = 405
    reason = "method_not_allowed"


class ClientTimeout(HttpError):
    status = 408
    reason = "client_timeout"


class BodyTooLarge(HttpError):
    status = 413
    reason = "body_too_large"


class UpstreamError(HttpError):
    """The upstream failed; ``kind`` is the metric label (connect|timeout|pool|protocol)."""

    kind: ErrorKind = ErrorKind.PROTOCOL
    # A verdict on the engine itself (it refused the connection, or dropped one it had
    # accepted): down until its probe answers again (``lifecycle.probe.engine_refused``).
    engine_gone: bool = False


class UpstreamUnavailable(UpstreamError):
    status = 502
    reason = "upstream_unavailable"
    kind = ErrorKind.CONNECT
    engine_gone = True


class UpstreamBusy(UpstreamError):
    status = 503
    reason = "upstream_busy"
    kind = ErrorKind.POOL


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "upstream_timeout"
    kind = ErrorKind.TIMEOUT


class UpstreamProtocolError(UpstreamUnavailable):
    """The connection broke or spoke nonsense before a complete response head arrived."""

    kind = ErrorKind.PROTOCOL
    engine_gone = False


class UpstreamDropped(UpstreamProtocolError):
    """The engine closed or reset a connection it had accepted before its answer's head:
    what a crashed engine process looks like to a generation in flight."""

    engine_gone = True
