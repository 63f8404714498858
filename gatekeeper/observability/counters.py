"""Request counts, written once into both the views that read them.

Prometheus scrapes the labelled counters (by route); ``/status`` and the alert
signals read plain totals (by outcome, reason, error kind) without walking the
registry. ``Counters`` is the only writer of either view, and each method
updates both in the same call, so they cannot drift apart.

    counters = Counters(metrics)
    counters.request("generate", "admitted")
    counters.rejection("generate", "busy")
    counters.outcomes["admitted"]   # 1, and gatekeeper_requests_total{...} is 1
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter

from gatekeeper.core.vocab import ErrorKind, Outcome
from gatekeeper.observability.metrics import OUTCOMES, Metrics


class Counters:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._reasons: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        # Labelled children by (route, value): prometheus_client's labels() validates and
        # hashes on every call (about 3 % of a rejection's CPU); the children never change.
        self._children: dict[tuple[Counter, str, str], Counter] = {}

    def _child(self, family: Counter, route: str, value: str) -> Counter:
        key = (family, route, value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(route, value)
        return child

    def request(self, route: str, outcome: Outcome) -> None:
        """One request of ``route`` ended as ``outcome`` (admitted, passed, ...)."""
        self._outcomes[outcome] += 1
        self._child(self._metrics.requests, route, outcome).inc()

    def rejection(self, route: str, reason: str) -> None:
        """One request of ``route`` turned away with reason code ``reason``."""
        self._reasons[reason] = self._reasons.get(reason, 0) + 1
        self._child(self._metrics.rejections, route, reason).inc()

    def upstream_error(self, route: str, kind: ErrorKind) -> None:
        """One failure of kind ``kind`` while talking to the upstream for ``route``."""
        self._errors[kind] = self._errors.get(kind, 0) + 1
        self._child(self._metrics.upstream_errors, route, kind).inc()

    # Read-only views of the totals (the caller gets a copy it may keep).

    @property
    def outcomes(self) -> Mapping[str, int]:
        return dict(self._outcomes)

    @property
    def rejections_by_reason(self) -> Mapping[str, int]:
        return dict(self._reasons)

    @property
    def upstream_errors_by_kind(self) -> Mapping[str, int]:
        return dict(self._errors)
