"""A user's own jobs: ``GET <jobs_path>`` on the public listener (issue #20 §2).

The caller is known by its client key, derived exactly as a queue request's
(``caller_key``, which ``route.QueueRoute`` uses too), and the list holds the
**handles** that key holds or held (``handles``): each submitter's own id on a
job, never another identity's, so a job coalesced across client keys
(``jobs.coalesce_across_clients``) shows in each list under that list's own
id. An entry is exactly what ``GET <jobs_path>/<id>`` shows for that id
(``handle_view``); a handle let go by ``DELETE`` reads ``cancelled``.

Query (anything else is ``400 bad_query`` with a ``detail``)::

    limit=1..100        entries per page (default 20)
    cursor=<opaque>     the ``next`` of the previous page
    state=done,failed   only these states (repeatable, or a comma list)

Newest first. The cursor names the last handle a page looked at, and a new
handle always sorts before every old one, so pages neither repeat nor skip an
entry while jobs are submitted. A filtered page reads a bounded number of
handles (``store.LIST_SCAN``) and may come out short, even empty, with a
``next``: only ``next: null`` says the list is at its end.

Who may list (``jobs.listing``): ``auto`` (default) lists only under a
``header:<Name>`` client key, and refuses a request without the header
(``400 no_client_key``: its key would be its address, shared by everyone
behind it); ``remote`` keys get ``404 listing_off``, since everyone behind one
address (an office, a NAT, the frontend's own server) would share one list.
``on`` lists under any key; ``off`` never. A header key is only as good as
whoever sets it: the header must come from the backend after its login, never
straight from a browser (a job id is the capability to read a result).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from gatekeeper.config import Config
from gatekeeper.core.clientkey import client_key
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.handle_view import handle_view
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.service import JobService

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
PARAMS = ("limit", "cursor", "state")
_CURSOR_BYTES = 8


class BadQuery(ValueError):
    """The listing's query cannot be answered; ``str()`` is the ``detail``."""


@dataclass(frozen=True)
class ListQuery:
    limit: int = DEFAULT_LIMIT
    before: int | None = None  # the decoded cursor
    states: frozenset[JobState] | None = None

    def params(self, cursor: str | None) -> dict[str, str]:
        """This query as URL parameters, with ``cursor`` (links to this list's pages)."""
        out = {"limit": str(self.limit)}
        if self.states is not None:
            out["state"] = ",".join(s.value for s in JobState if s in self.states)
        if cursor is not None:
            out["cursor"] = cursor
        return out


def caller_key(cfg: Config, request: web.BaseRequest) -> str:
    """The client key of a request (``core.clientkey``): the one its jobs are stored under."""
    q = cfg.admission.queue
    return client_key(
        q.client_key,
        q.trusted_proxies,
        request.remote,
        request.headers,
        request.headers.getall("X-Forwarded-For", []),
    )


def refusal(cfg: Config, client: str) -> tuple[int, str, str] | None:
    """Why ``client`` may not list its jobs under these rules, as (status, reason, detail)."""
    mode, rule = cfg.jobs.listing, cfg.admission.queue.client_key
    if mode == "off":
        return 404, "listing_off", "listing jobs is off here (jobs.listing: off)"
    if mode == "on":
        return None
    if rule.source != "header":
        return (
            404,
            "listing_off",
            "listing jobs is off: jobs.listing is auto and admission.queue.client_key is"
            " remote, so everyone behind one address would share one list (set client_key:"
            " header:<Name>, or jobs.listing: on)",
        )
    if not client.startswith("hdr:"):
        return (
            400,
            "no_client_key",
            f"listing your jobs needs the {rule.header} header: without it a request is"
            " known by its address, which others may share",
        )
    return None


def parse_query(query: MultiMapping[str]) -> ListQuery:
    """The listing's query; ``BadQuery`` names the first thing wrong with it."""
    unknown = sorted(set(query.keys()) - set(PARAMS))
    if unknown:
        raise BadQuery(f"unknown query parameter {unknown[0]!r}; known: {', '.join(PARAMS)}")
    limit = DEFAULT_LIMIT
    limits = query.getall("limit", [])
    if len(limits) > 1:
        raise BadQuery("limit is given more than once")
    if limits:
        text = limits[0].strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise BadQuery(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limits[0]!r}")
        limit = int(text)
    cursors = query.getall("cursor", [])
    if len(cursors) > 1:
        raise BadQuery("cursor is given more than once")
    before = decode_cursor(cursors[0]) if cursors else None
    states: set[JobState] = set()
    for value in query.getall("state", []):
        for name in value.split(","):
            name = name.strip()
            try:
                states.add(JobState(name))
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise BadQuery(f"unknown state {name!r}; one of {known}") from None
    return ListQuery(limit, before, frozenset(states) if states else None)


def encode_cursor(key: int) -> str:
    """An opaque cursor for the store's list ``key`` (a page's ``next``)."""
    return base64.urlsafe_b64encode(key.to_bytes(_CURSOR_BYTES, "big")).rstrip(b"=").decode()


def decode_cursor(text: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    key = int.from_bytes(raw, "big")
    if len(raw) != _CURSOR_BYTES or key < 1 or encode_cursor(key) != text:
        raise BadQuery(f"cursor {text!r} is not one this list gave (use the 'next' of a page)")
    return key


def page(jobs: JobService, client: str, query: ListQuery, now: float, base: str) -> dict[str, Any]:
    """One page of ``client``'s list: ``{"jobs", "next", "links"}`` (module text)."""
    found = jobs.store.client_handles(
        client, limit=query.limit, before=query.before, states=query.states
    )
    views: list[dict[str, Any]] = []
    wall = jobs.deps.wall()
    for entry in found.entries:
        job = _job(jobs, entry.record.id) or Job.from_record(entry.record, now=now, wall=wall)
        view = handle_view(jobs, job, entry.handle, now, base)
        # The store's filter is a superset (it cannot see a live job's cancel request).
        if query.states is None or view["state"] in query.states:
            views.append(view)
    cursor = None if found.next is None else encode_cursor(found.next)
    this = query.params(None if query.before is None else encode_cursor(query.before))
    return {
        "jobs": views,
        "next": cursor,
        "links": {
            "self": f"{base}?{urlencode(this)}",
            "next": None if cursor is None else f"{base}?{urlencode(query.params(cursor))}",
        },
    }


def _job(jobs: JobService, job_id: str) -> Job | None:
    """The live job (positions, ETAs) or one whose ending is not stored yet."""
    return jobs.live.get(job_id) or jobs.unsaved.get(job_id)


def listing_answer(
    jobs: JobService, request: web.BaseRequest, now: float, base: str
) -> tuple[int, str | None, Mapping[str, Any]]:
    """(status, refusal reason or None, body) of ``GET <jobs_path>`` (module text)."""
    cfg = jobs.config
    client = caller_key(cfg, request)
    refused = refusal(cfg, client)
    if refused is not None:
        status, reason, detail = refused
        return status, reason, {"detail": detail, "reason": reason}
    try:
        parsed = parse_query(request.query)
    except BadQuery as exc:
        return 400, "bad_query", {"detail": str(exc), "reason": "bad_query"}
    return 200, None, page(jobs, client, parsed, now, base)
