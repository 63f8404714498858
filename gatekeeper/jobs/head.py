"""What a queue route's request head says about the job it would make (PURE).

``JobService.refusal_before_body`` decides from a ``RequestHead`` whether the
request is refused whatever its body (module text of ``jobs.route``: the rule).
The body enters only the coalescing key, so the head alone is enough unless a
live job or a kept result could share this request's key. ``may_match`` is the
over-approximation of "could share the key" that needs no body: the same route,
method and path (the query is left out: the key reads it decoded, a record keeps
it raw) and, when the body's length is known from the head, the same length.
Anything the key adds (the client, headers, ``jobs.coalesce_vary``) only narrows
the real matches, so the test stays sound whatever the key is made of.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gatekeeper.config.jobs import Jobs
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.record import JobRecord

R = TypeVar("R")


class KeptResults(Protocol):
    """What ``decide`` asks of the store (``store.JobStore``)."""

    def find_coalesce(self, key: str, now: float, keep: float) -> JobRecord | None: ...

    def kept_like(self, head: RequestHead, now: float, keep: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class RequestHead:
    client: str  # the client key (core.clientkey)
    route: str
    method: str
    path: str  # the raw path as sent, without the query
    # The body's length as the store will count it, when the head says so: the
    # Content-Length of a body without Content-Encoding; None: any length (chunked, or
    # an encoded body whose decoded size the head does not tell).
    body_size: int | None
    # The whole coalescing key when the body does not enter it (an Idempotency-Key),
    # else None.
    key: str | None = None

    def may_match(self, record: JobRecord) -> bool:
        """Could some body give this request the coalescing key of ``record``?"""
        return (
            record.coalesce_key is not None
            and record.route == self.route
            and record.method == self.method
            and record.target.partition("?")[0] == self.path
            and (self.body_size is None or record.body_size == self.body_size)
        )

    def decide(
        self,
        refusal: R | None,
        jobs: Jobs,
        live: Iterable[JobRecord],
        store: KeptResults,
        wall: float,
    ) -> R | None:
        """``refusal`` (the waiting room's answer to this client now), unless a body could
        still make the request coalesce with a ``live`` job or a kept result: then None,
        the body decides. With the whole ``key`` known this is exactly ``submit``'s lookup."""
        if refusal is None or not jobs.coalesce:
            return refusal
        if self.key is not None:
            kept = store.find_coalesce(self.key, wall, jobs.keep)
            may = any(r.coalesce_key == self.key for r in live) or (
                kept is not None and kept.state == JobState.DONE
            )
        else:
            may = any(self.may_match(r) for r in live) or store.kept_like(self, wall, jobs.keep)
        return None if may else refusal
