"""The chaos driver's coalescing between two identities (issue #18 §3).

Exchange ``identities`` sends 2-4 requests at once to the chaos rules' queue route
``shared`` (``POST /_sim/echo/shared``: the engine-sim echoes the request it got,
headers included), each as ``alice`` or ``bob`` (``Authorization: Bearer <who>``,
one client address: the identity is the header, as in the issue's attack), held or
``Prefer: respond-async``, with a body drawn from a small pool so identical requests
meet, within one exchange and across exchanges. An async submitter sometimes deletes
its own id at once.

The invariant, checked on every answer: **no answer carries the other identity's
job id** (202 body, ``Location``, ``X-Gatekeeper-Job``, the job JSON, the result)
and no identity is ever given the engine's answer to the other's request (the
echoed ``Authorization`` is its own). A breach is the outcome ``CROSSED``, which the
phase reports as a violation. Ids are remembered across the whole run (they are
144 random bits: two runs never share one).
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from chaos import Chaos

PATH = "/_sim/echo/shared"
JOBS = "/_gatekeeper/jobs"
WHO = ("alice", "bob")
CROSSED = "CROSSED"
# Every job id an identity was shown, run-wide: id -> identity.
SEEN: dict[str, str] = {}
ROUTE = "  - {{name: shared, match: {{methods: [POST], path: /_sim/echo/shared}}, action: queue}}\n"


class Crossed(Exception):
    """An answer carried the other identity's id or answer."""


def _claim(who: str, job_id: str | None, *texts: str) -> None:
    """``who`` was shown ``job_id`` (and ``texts``): no id of the other identity in any."""
    if job_id is not None:
        owner = SEEN.setdefault(job_id, who)
        if owner != who:
            raise Crossed(f"{who} was given {owner}'s job id {job_id}")
    for text in texts:
        for seen, owner in SEEN.items():
            if owner != who and seen in text:
                raise Crossed(f"{who}'s answer carries {owner}'s job id {seen}")


def _echoed(who: str, text: str) -> None:
    """The engine's echo answered ``who``'s own request (its Authorization)."""
    try:
        headers = json.loads(text)["headers"]
    except (ValueError, KeyError, TypeError):
        return  # not an echo (a refusal, an engine error): nothing to compare
    auth = [v for k, v in headers if k.lower() == "authorization"]
    if auth != [f"Bearer {who}"]:
        raise Crossed(f"{who} was given the answer to Authorization {auth}")


async def _held(c: Chaos, s: aiohttp.ClientSession, who: str, body: bytes) -> str:
    async with s.post(c.proxy + PATH, data=body, headers=_auth(who)) as r:
        text = await r.text()
        _claim(who, r.headers.get("X-Gatekeeper-Job"), text, json.dumps(dict(r.headers)))
        if r.status == 200:
            _echoed(who, text)
        return str(r.status)


async def _async(c: Chaos, s: aiohttp.ClientSession, who: str, body: bytes, drop: bool) -> str:
    headers = {**_auth(who), "Prefer": "respond-async"}
    async with s.post(c.proxy + PATH, data=body, headers=headers) as r:
        text = await r.text()
        job_id = r.headers.get("X-Gatekeeper-Job")
        _claim(who, job_id, text, json.dumps(dict(r.headers)))
        if r.status != 202 or job_id is None:
            return str(r.status)
        if json.loads(text)["id"] != job_id or r.headers["Location"] != f"{JOBS}/{job_id}":
            raise Crossed(f"{who}'s 202 names two ids: {text} / {job_id}")
    url = f"{c.proxy}{JOBS}/{job_id}"
    if drop:
        async with s.delete(url) as r:
            _claim(who, r.headers.get("X-Gatekeeper-Job"), await r.text())
            return f"deleted:{r.status}"
    state = "queued"
    for _ in range(80):  # up to ~8 s; the exchange's own timeout is longer
        async with s.get(url) as r:
            text = await r.text()
            _claim(who, r.headers.get("X-Gatekeeper-Job"), text)
            if r.status != 200:
                return f"get:{r.status}"
            state = json.loads(text)["state"]
        if state not in ("queued", "running"):
            break
        await asyncio.sleep(0.1)
    else:
        async with s.delete(url) as r:  # leave nothing queued behind the phase
            _claim(who, r.headers.get("X-Gatekeeper-Job"), await r.text())
        return "gave_up"
    async with s.get(url + "/result") as r:
        text = await r.text()
        _claim(who, r.headers.get("X-Gatekeeper-Job"), text, json.dumps(dict(r.headers)))
        if r.status == 200:
            _echoed(who, text)
        return f"{state}:{r.status}"


def _auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}", "Content-Type": "application/json"}


async def identities(c: Chaos, rng: random.Random) -> str:
    """2-4 submitters of two identities, identical bodies likely (module text)."""
    body = json.dumps({"song": rng.randrange(3)}).encode()
    plan = [
        (rng.choice(WHO), rng.random() < 0.5, rng.random() < 0.2)
        for _ in range(rng.randrange(2, 5))
    ]
    s = c.http
    try:
        got = await asyncio.gather(
            *(
                _async(c, s, who, body, drop) if is_async else _held(c, s, who, body)
                for who, is_async, drop in plan
            )
        )
    except Crossed as exc:
        c.note(f"identities: {exc}")
        return CROSSED
    return "ok" if all(g.startswith(("200", "done:200", "deleted")) for g in got) else got[0]


def crossed(outcomes: dict[str, Any]) -> int:
    """How many exchanges of a phase broke the invariant."""
    return sum(counts[CROSSED] for counts in outcomes.values())
