"""End to end: the real answers of ``gatekeeper run`` match its own OpenAPI document.

The real CLI in front of the real ``engine-sim``. The test fetches
``<jobs_path>/openapi.json``, validates it (openapi-spec-validator), then drives
every kind of answer the jobs API and a queue route give (202 submit, the job
in each state, its events frames, the caller's list page by page, 400, 404,
405, 409, 413, 421, 429, 503) and checks each received JSON body against the
schema the document declares for that operation and status
(``openapi_support.Contract``); an answer the document does not declare fails.
With ``client_key: header:X-User-Id``, each user lists only their own jobs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate
from openapi_support import Contract
from support import Proc, poll, rules, start_gatekeeper

pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
ALICE = {"X-User-Id": "alice"}
BOB = {"X-User-Id": "bob"}
CAROL = {"X-User-Id": "carol"}
DAVE = {"X-User-Id": "dave"}

BASE = {
    "admission": {
        "max_in_flight": 1,
        "expected_seconds": 1,
        "sample_interval": 0.1,
        "queue": {"per_client": 2, "max_waiting": 3, "client_key": "header:X-User-Id"},
    },
    "limits": {"max_body_bytes": 65536},
    "upstream": {"probe": {"interval": 0.5}},
    # Nothing is fetched while the gatekeeper stops: no 5 s linger after bob's last song.
    "shutdown": {"linger": 0},
}


def song(lyrics: str, seconds: float) -> dict[str, Any]:
    return {"lyrics": lyrics, "description": "pop", "seconds": seconds}


class Client:
    """Requests whose JSON answers are checked against the document as they arrive."""

    def __init__(self, http: aiohttp.ClientSession, url: str, contract: Contract):
        self.http, self.url, self.contract = http, url, contract

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, headers=headers, **kw) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            body = json.loads(raw) if ctype.startswith("application/json") else raw
            if ctype.startswith("application/json"):
                schema = self.contract.check(method, path.split("?", 1)[0], r.status, body)
                assert schema is not None, (method, path, r.status)
                if schema == "Error":
                    assert r.headers["X-Gatekeeper-Reason"] == body["reason"]
                    if "retry_after" in body:
                        assert r.headers["Retry-After"] == str(body["retry_after"])
            else:
                self.contract.response(method, path.split("?", 1)[0], r.status)
            return r.status, body

    async def submit(self, who: dict[str, str], body: Any) -> tuple[int, Any]:
        return await self.call("POST", "/generate", json=body, headers={**ASYNC, **who})

    async def until(self, job_id: str, state: str) -> Any:
        seen: list[Any] = []

        async def reached() -> bool:
            seen.append((await self.call("GET", f"{JOBS}/{job_id}"))[1])
            return bool(seen[-1]["state"] == state)

        await poll(reached, 30.0)
        return seen[-1]

    async def events(self, job_id: str) -> list[Any]:
        """Every frame of the job's events until the stream ends, each checked as the
        document's x-gatekeeper-event says (data: a Job)."""
        path = f"{JOBS}/{job_id}/events"
        declared = self.contract.response("GET", path, 200)["content"]["text/event-stream"]
        schema = declared["x-gatekeeper-event"]["data"]["$ref"].rsplit("/", 1)[-1]
        frames: list[Any] = []
        async with self.http.get(self.url + path) as r:
            assert r.status == 200
            event = None
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    assert event == declared["x-gatekeeper-event"]["event"]
                    frames.append(json.loads(line[6:]))
                    self.contract.validate(schema, frames[-1])
        return frames


async def test_real_answers_match_the_openapi_document(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """Every JSON answer of the jobs API and of a queue route validates against the schema
    the served document declares for it; two users each list only their own jobs."""
    proc, url, _ = start_gatekeeper(
        tmp_path, rules(BASE), fresh_engine[1], "--state-dir", str(tmp_path / "state")
    )
    procs.append(proc)
    async with http.get(f"{url}{JOBS}/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    validate(doc)
    c = Client(http, url, Contract(doc))

    # 202: alice's first song runs, her second waits; 429: her third is over per_client.
    # a1 is held (an hour: it runs through every check below, however slow the box) and
    # ended by the engine's /_sim/finish once the checks are done.
    status, a1 = await c.submit(ALICE, song("a1", 3600.0))
    assert status == 202, a1
    await c.until(a1["id"], "running")
    status, a2 = await c.submit(ALICE, song("a2", 0.5))
    assert status == 202 and a2["state"] == "queued" and a2["position"] == 1, a2
    watching = asyncio.create_task(c.events(a2["id"]))
    status, body = await c.submit(ALICE, song("a3", 0.5))
    assert status == 429 and body["reason"] == "client_limit", body
    # 503: the queue holds 3 (a2, b1, c1); dave is refused queue_full.
    status, b1 = await c.submit(BOB, song("b1", 0.5))
    assert status == 202, b1
    status, c1 = await c.submit(CAROL, song("c1", 0.5))
    assert status == 202, c1
    status, body = await c.submit(DAVE, song("d1", 0.5))
    assert status == 503 and body["reason"] == "queue_full", body
    # 400 bad_header, 413 over max_body_bytes.
    status, body = await c.call(
        "POST", "/generate", json=song("x", 1), headers={"Prefer": "respond-async=1", **DAVE}
    )
    assert status == 400 and body["reason"] == "bad_header", body
    status, body = await c.call("POST", "/generate", data=b"x" * 70000, headers={**ASYNC, **DAVE})
    assert status == 413 and body["reason"] == "body_too_large", body

    # The job in each state; a result not ready (409); a DELETE of a waiting job and again.
    assert (await c.call("GET", f"{JOBS}/{a1['id']}"))[1]["state"] == "running"
    status, body = await c.call("GET", f"{JOBS}/{a2['id']}/result")
    assert status == 409 and body["reason"] == "not_done", body
    status, body = await c.call("DELETE", f"{JOBS}/{c1['id']}")
    assert status == 200 and body["state"] == "cancelled", body
    status, body = await c.call("DELETE", f"{JOBS}/{c1['id']}")
    assert status == 409 and body["reason"] == "job_finished", body

    # 404, 421, 405 and the list's own refusals.
    status, body = await c.call("GET", f"{JOBS}/{'A' * 24}")
    assert status == 404 and body["reason"] == "not_found", body
    status, body = await c.call("GET", f"{JOBS}/otherbox.{'A' * 24}")
    assert status == 421 and body["box"] == "otherbox", body
    async with http.put(f"{url}{JOBS}/{a1['id']}") as r:
        assert r.status == 405
    status, body = await c.call("GET", f"{JOBS}?state=finished", headers=ALICE)
    assert status == 400 and body["reason"] == "bad_query", body
    status, body = await c.call("GET", JOBS)
    assert status == 400 and body["reason"] == "no_client_key", body

    # The lists: alice's two, one a page; bob's one; carol's cancelled one.
    status, page1 = await c.call("GET", f"{JOBS}?limit=1", headers=ALICE)
    assert status == 200 and [j["id"] for j in page1["jobs"]] == [a2["id"]], page1
    status, page2 = await c.call("GET", page1["links"]["next"], headers=ALICE)
    assert [j["id"] for j in page2["jobs"]] == [a1["id"]] and page2["next"] is None, page2
    bob = (await c.call("GET", JOBS, headers=BOB))[1]
    assert [j["id"] for j in bob["jobs"]] == [b1["id"]]
    carol = (await c.call("GET", f"{JOBS}?state=cancelled", headers=CAROL))[1]
    assert [j["id"] for j in carol["jobs"]] == [c1["id"]]
    for foreign in (a1["id"], a2["id"], c1["id"]):
        assert foreign not in json.dumps(bob)

    # Done: the view, the result (the engine's bytes), the events seen along the way.
    async with http.post(fresh_engine[1] + "/_sim/finish") as r:
        assert (await r.json())["finished"] == 1
    done = await c.until(a2["id"], "done")
    assert done["result"]["status"] == 200
    status, wav = await c.call("GET", f"{JOBS}/{a2['id']}/result")
    assert status == 200 and wav[:4] == b"RIFF"
    frames = await asyncio.wait_for(watching, 30.0)
    assert frames[0]["state"] == "queued" and frames[-1]["state"] == "done"
    assert {"queued", "running", "done"} <= {f["state"] for f in frames}
    status, mine = await c.call("GET", f"{JOBS}?state=done", headers=ALICE)
    assert mine["jobs"][0]["id"] == a2["id"]

    for needed in [
        ("POST", "/generate", "202"),
        ("POST", "/generate", "429"),
        ("POST", "/generate", "503"),
        ("POST", "/generate", "413"),
        ("POST", "/generate", "400"),
        ("GET", JOBS, "200"),
        ("GET", JOBS, "400"),
        ("GET", f"{JOBS}/{{id}}", "200"),
        ("GET", f"{JOBS}/{{id}}", "404"),
        ("GET", f"{JOBS}/{{id}}", "421"),
        ("DELETE", f"{JOBS}/{{id}}", "200"),
        ("DELETE", f"{JOBS}/{{id}}", "409"),
        ("GET", f"{JOBS}/{{id}}/result", "409"),
        ("GET", f"{JOBS}/{{id}}/result", "200"),
        ("GET", f"{JOBS}/{{id}}/events", "200"),
    ]:
        assert needed in c.contract.checked, needed
