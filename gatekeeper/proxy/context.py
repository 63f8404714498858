"""One forwarded request as every step of the proxy sees it.

Built once the plan has matched a route; the admit step, the relay, and the
routes that features plug in (queue, Gradio) all take it instead of passing
the request, the rules, the route and the record one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gatekeeper.config import Config, Route
from gatekeeper.lifecycle.runtime import Runtime
from gatekeeper.proxy.record import RequestRecord


@dataclass(frozen=True, slots=True)
class RequestContext:
    request: web.BaseRequest
    # The rules taken at the request's arrival: used to its end, whatever a reload does.
    runtime: Runtime
    route: Route
    rec: RequestRecord

    @property
    def config(self) -> Config:
        return self.runtime.config
