"""Requests that look like generations but passed ungated (issue #18 §7).

A newcomer who puts gatekeeper in front of an engine and gets the routes wrong sees
everything work: the generation call matches no gated route, passes untouched, and
the engine runs as many songs at once as are asked for. That mistake must not be
silent. Two kinds of requests on a ``pass`` route look like a generation:

- ``slow_answer``: the engine took ``threshold`` seconds or more to send the *head*
  of its answer. Downloads and progress streams answer at once and then stream; a
  generation computes for minutes first. The threshold is ``log.ungated.slow_answer``,
  by default a quarter of ``admission.expected_seconds``, between 1 s and 30 s.
- ``gradio_join``: a Gradio queue join (``…/queue/join``) or a direct
  ``…/run/<api>``/``…/call/<api>`` call: that is how a Gradio app starts its work,
  and it belongs on an ``action: gradio`` route.

``looks_like_generation`` is the pure decision. ``UngatedWatch`` counts them (for
``/status`` and ``gatekeeper status``; the wiring counts each one in
``gatekeeper_ungated_generations_total{route,kind}`` too) and logs one WARNING for the
first, then at most one every ``log.ungated.warn_every`` (``LOG_INTERVAL`` by default)
with the count since the last: a box sending every song ungated gets a handful of
lines a day, not one per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gatekeeper.ungated")

LOG_INTERVAL = 600.0  # seconds between two warnings (the count since is in the next)
MIN_THRESHOLD, MAX_THRESHOLD = 1.0, 30.0
# A Gradio app starts its work with a queue join, or a direct call of a function.
_GRADIO_CALLS = ("/gradio_api/run/", "/gradio_api/call/")


def threshold(expected_seconds: float, configured: float | None = None) -> float:
    """Seconds before an ungated answer's head that make it look like a generation:
    ``configured`` (``log.ungated.slow_answer``), else derived from the expected duration."""
    if configured is not None:
        return configured
    return min(MAX_THRESHOLD, max(MIN_THRESHOLD, expected_seconds / 4))


def looks_like_generation(
    action: str, method: str, path: str, head_seconds: float | None, limit: float
) -> str | None:
    """Why a finished request looks like an ungated generation (``slow_answer`` or
    ``gradio_join``), or None. Only ``pass`` requests: the others are gated or refused."""
    if action != "pass":
        return None
    bare = path.split("?", 1)[0]
    if method == "POST" and (
        "/queue/join" in bare or bare.startswith(_GRADIO_CALLS) or bare == "/run/predict"
    ):
        return "gradio_join"
    if head_seconds is not None and head_seconds >= limit:
        return "slow_answer"
    return None


@dataclass
class UngatedWatch:
    """The count of ungated generation look-alikes, and the rate-limited warning."""

    count: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    _since_log: int = 0
    _next_log: float | None = None

    def observe(
        self,
        *,
        route: str,
        action: str,
        method: str,
        path: str,
        head_seconds: float | None,
        limit: float,
        now: float,
        interval: float = LOG_INTERVAL,
    ) -> str | None:
        """Count one finished request if it looks like an ungated generation."""
        kind = looks_like_generation(action, method, path, head_seconds, limit)
        if kind is None:
            return None
        self.count += 1
        self._since_log += 1
        self.by_route[route] = self.by_route.get(route, 0) + 1
        bare = path.split("?", 1)[0]
        self.last = {"route": route, "method": method, "path": bare, "kind": kind}
        if head_seconds is not None:
            self.last["head_seconds"] = round(head_seconds, 3)
        if self._next_log is None or now >= self._next_log:
            why = (
                f"the engine took {head_seconds:.1f}s to answer (>= {limit:g}s)"
                if kind == "slow_answer" and head_seconds is not None
                else "a Gradio queue join or call"
            )
            log.warning(
                "%d request(s) that look like generations passed ungated (route %r, action "
                "pass; latest: %s %s, %s): the engine may run several at once. Match the "
                "generation call with a queue or admit route (a Gradio app: action gradio); "
                "see README 'In front of your engine'",
                self._since_log,
                route,
                method,
                bare,
                why,
            )
            self._since_log = 0
            self._next_log = now + interval
        return kind

    def status(self) -> dict[str, Any] | None:
        """The ``/status`` section ``ungated``: None while nothing was seen."""
        if not self.count:
            return None
        return {"count": self.count, "by_route": dict(self.by_route), "last": self.last}
