"""What the proxy does with one request, decided before any I/O (PURE).

``plan`` answers "why was this request rejected?" (or passed, or admitted) in
one place, from plain facts: the method, the path, the declared body length,
the rules and the gate's state at this instant. The aiohttp handler
(``proxy.handler``) only carries the plan out. The outcomes, in the order they
are tried:

=====================  =========================================================
``ServeStatus``        GET/HEAD of ``status_path``: gatekeeper's own status JSON
``ServeJobs``          anything under ``jobs_path``: the async-job endpoints
                       (``jobs.api``), before any route is matched
``Refuse`` (blocked)   a ``block`` route: its status and detail, never forwarded
``Refuse`` (413)       a declared ``Content-Length`` over ``limits.max_body_bytes``
``Forward`` (pass)     a ``pass`` route (or no route): the passthrough pool
``Forward`` (gradio)   a ``gradio`` route: ``gradio.route`` decides per Gradio
                       request (a gated function's queue join takes a slot; the
                       rest passes)
``Refuse`` (draining)  a ``queue`` or ``batch`` route while draining (waiting would
                       outlive us)
``Forward`` (batch)    a ``batch`` route: ``jobs.batch`` cuts the body into jobs of
                       its ``each`` queue route (without that feature: admitted
                       whole, like an admit route, never passed)
``Forward`` (queue)    a ``queue`` route: the waiting room refuses from the head
                       when no body could change it (``jobs.route``), else the body
                       is spooled and it decides (``Jobs.submit``): coalesce,
                       refuse, or wait its turn
``Refuse`` (rejected)  an ``admit`` route the gate would refuse *now*, with
                       Retry-After; no body is read. The reasons, first one
                       answered: draining, busy, engine_down, cpu, memory,
                       cpu_pressure, memory_pressure, io_pressure (PSI),
                       gpu_memory, gpu_utilization (``admission.reasons``)
``Forward`` (admit)    an ``admit`` route with a free slot: the body is spooled,
                       then the lease taken (the gate decides again at that
                       moment; the slot may have gone meanwhile)
=====================  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.config import Config, Route
from gatekeeper.core.admission import Gate, Rejection
from gatekeeper.core.routes import Router
from gatekeeper.core.vocab import Outcome


@dataclass(frozen=True, slots=True)
class ServeStatus:
    """Answer with the status document."""


@dataclass(frozen=True, slots=True)
class ServeJobs:
    """An async-job endpoint: ``rest`` is the path after ``jobs_path`` ("" or "/<id>...")."""

    rest: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer without forwarding. ``detail`` None: render the reason's message."""

    route: Route
    status: int
    reason: str
    outcome: Outcome  # BLOCKED | REJECTED
    retry_after: int | None = None
    detail: str | None = None
    close: bool = False  # the unread body is unwanted: close the connection after


@dataclass(frozen=True, slots=True)
class Forward:
    """Send it to the engine: ``gated`` takes the body first, then a lease."""

    route: Route
    gated: bool
    queued: bool = False  # a queue route: the waiting room decides after the body
    gradio: bool = False  # a gradio route: gradio.route decides (joins of gated functions)
    batch: bool = False  # a batch route: jobs.batch cuts it into queued jobs (issue #20 §3)


Plan = ServeStatus | ServeJobs | Refuse | Forward

# aiohttp answers these itself; nothing else reaches plan() with a body it cannot frame.
_STATUS_METHODS = frozenset({"GET", "HEAD"})


def plan(
    method: str,
    path: str,
    content_length: int | None,
    config: Config,
    router: Router,
    gate: Gate,
    now: float,
) -> Plan:
    """The whole decision for one request (see the table above)."""
    if method in _STATUS_METHODS and path == config.status_path:
        return ServeStatus()
    jobs_path = config.jobs_path
    if jobs_path is not None and path.startswith(jobs_path):
        rest = path[len(jobs_path) :]
        if not rest or rest.startswith("/"):
            return ServeJobs(rest)
    route = router.match(method, path)
    if route.action == "block":
        return Refuse(route, route.status or 403, "blocked", Outcome.BLOCKED, detail=route.detail)
    max_body = config.limits.max_body_bytes
    if content_length is not None and content_length > max_body:
        return Refuse(
            route,
            413,
            "body_too_large",
            Outcome.REJECTED,
            detail=f"request body of {content_length} bytes exceeds limits.max_body_bytes "
            f"({max_body})",
            close=True,
        )
    if route.action == "pass":
        return Forward(route, gated=False)
    if route.action == "gradio":
        return Forward(route, gated=False, gradio=True)
    if route.action in ("queue", "batch"):
        if gate.draining:
            return rejected(
                route, Rejection("draining", config.admission.retry_after_default), config
            )
        return Forward(
            route, gated=True, queued=route.action == "queue", batch=route.action == "batch"
        )
    rejection = gate.check(now)
    if rejection is not None:
        return rejected(route, rejection, config)
    return Forward(route, gated=True)


def rejected(route: Route, rejection: Rejection, config: Config) -> Refuse:
    """The answer to a gate rejection: here, or when the slot went while the body spooled."""
    return Refuse(
        route,
        config.admission.reject_status,
        rejection.reason,
        Outcome.REJECTED,
        retry_after=rejection.retry_after,
    )
