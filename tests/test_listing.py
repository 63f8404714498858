"""A user's own jobs, ``GET <jobs_path>`` (issue #20 §2): pure tables and in-process.

Each client key lists its own handles only (never another identity's job id, a
coalesced job included), newest first, in pages whose cursor survives new
submits, each entry exactly the job's own view; ``jobs.listing`` keeps the list
off where one would be shared (remote client keys); every bad query is a 400
with a ``detail``. The real process is in tests/test_openapi_e2e.py.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from multidict import MultiDict
from support import resources_file

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.core.vocab import JobState
from gatekeeper.enginesim import SimConfig, create_app
from gatekeeper.jobs import listing
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.listing import MAX_LIMIT, BadQuery, ListQuery, parse_query
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.jobs.sqlite_handles import FILTERED_SQL, LIST_SQL, WINDOW_SQL
from gatekeeper.jobs.store import JobStore

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
ALICE = {"X-User-Id": "alice"}
BOB = {"X-User-Id": "bob"}


# -- the query, the cursor, who may list: pure tables -----------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([], ListQuery()),
        ([("limit", "5")], ListQuery(limit=5)),
        ([("limit", str(MAX_LIMIT))], ListQuery(limit=MAX_LIMIT)),
        ([("state", "done")], ListQuery(states=frozenset({JobState.DONE}))),
        (
            [("state", "queued, running")],
            ListQuery(states=frozenset({JobState.QUEUED, JobState.RUNNING})),
        ),
        (
            [("state", "queued"), ("state", "running")],
            ListQuery(states=frozenset({JobState.QUEUED, JobState.RUNNING})),
        ),
        ([("cursor", listing.encode_cursor(42))], ListQuery(before=42)),
    ],
)
def test_a_good_query_reads_as_expected(query: list[tuple[str, str]], expected: ListQuery) -> None:
    """limit, cursor and state (repeated or a comma list) read into a ListQuery."""
    assert parse_query(MultiDict(query)) == expected


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ([("limit", "0")], "limit must be an integer from 1 to 100"),
        ([("limit", "101")], "limit must be an integer from 1 to 100"),
        ([("limit", "ten")], "not 'ten'"),
        ([("limit", "1"), ("limit", "2")], "limit is given more than once"),
        ([("state", "finished")], "unknown state 'finished'; one of queued, running"),
        ([("state", "done,")], "unknown state ''"),
        ([("cursor", "abc")], "cursor 'abc' is not one this list gave"),
        ([("cursor", listing.encode_cursor(1) + "A")], "is not one this list gave"),
        ([("cursor", "AAAAAAAAAAA")], "is not one this list gave"),  # key 0
        ([("page", "2")], "unknown query parameter 'page'; known: limit, cursor, state"),
    ],
)
def test_a_bad_query_says_what_is_wrong(query: list[tuple[str, str]], says: str) -> None:
    """Every malformed parameter is a BadQuery whose text (the 400's detail) names it."""
    with pytest.raises(BadQuery) as caught:
        parse_query(MultiDict(query))
    assert says in str(caught.value)


def test_a_cursor_is_opaque_and_round_trips() -> None:
    """A cursor decodes to the key it was made from, for small and huge keys."""
    for key in (1, 2, 1000, 2**40, 2**63 - 2):
        text = listing.encode_cursor(key)
        assert str(key) not in text
        assert listing.decode_cursor(text) == key


def _rules(mode: str, key: str) -> Any:
    return load_config(
        yaml.safe_dump({"jobs": {"listing": mode}, "admission": {"queue": {"client_key": key}}})
    )


@pytest.mark.parametrize(
    ("mode", "key", "client", "expected"),
    [
        ("auto", "header:X-User-Id", "hdr:alice", None),
        ("auto", "header:X-User-Id", "ip:10.0.0.1", (400, "no_client_key")),
        ("auto", "remote", "ip:10.0.0.1", (404, "listing_off")),
        ("on", "remote", "ip:10.0.0.1", None),
        ("on", "header:X-User-Id", "ip:10.0.0.1", None),
        ("off", "header:X-User-Id", "hdr:alice", (404, "listing_off")),
        ("off", "remote", "ip:10.0.0.1", (404, "listing_off")),
    ],
)
def test_who_may_list(mode: str, key: str, client: str, expected: tuple[int, str] | None) -> None:
    """jobs.listing auto lists under header keys only (a request without the header: 400),
    never under remote keys (everyone behind one address would share the list)."""
    got = listing.refusal(_rules(mode, key), client)
    assert (got if got is None else got[:2]) == expected
    if got is not None:
        assert "jobs.listing" in got[2] or "X-User-Id" in got[2]


def _plan(store: SqliteJobStore, sql: str, *args: object) -> str:
    return " | ".join(str(r[-1]) for r in store._db.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def test_the_list_query_is_an_index_range_without_a_sort(tmp_path: Path) -> None:
    """The SQLite list reads the client's handles through the handles_client index, newest
    first without a temporary B-tree, and each job by its id: O(page), not O(store); the
    filtered list reads a window of the same index (LIMIT scan) and sorts only that."""
    store = SqliteJobStore.open(tmp_path)
    try:
        plan = _plan(store, LIST_SQL, "c", 10, 5)
        filtered = _plan(store, FILTERED_SQL.format(marks="?"), "c", 10, 50, "done", 1, 6)
        window = _plan(store, WINDOW_SQL, "c", 10, 50)
    finally:
        store.close()
    assert "USING INDEX handles_client (client=? AND rowid<?)" in plan, plan
    assert "TEMP B-TREE" not in plan.upper(), plan
    assert "sqlite_autoindex_jobs" in plan or "PRIMARY KEY" in plan, plan
    assert "USING INDEX handles_client (client=? AND rowid<?)" in filtered, filtered
    assert "sqlite_autoindex_jobs" in filtered or "PRIMARY KEY" in filtered, filtered
    assert "USING COVERING INDEX handles_client (client=? AND rowid<?)" in window, window


# -- in-process: the real app in front of the engine stand-in ---------------------------------


@pytest.fixture
async def engine(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(
        create_app(SimConfig(seconds=0.2, burn_cpu=False, memory_mb=0, progress_interval=0.05))
    )


async def _box(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path, **more: Any
) -> tuple[AppState, TestClient]:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": str(engine.make_url("")).rstrip("/")},
        "admission": {
            "max_in_flight": 1,
            "queue": {"per_client": 50, "max_waiting": 100, "client_key": "header:X-User-Id"},
            **resources_file(tmp_path / "calm.json")["admission"],
        },
        "jobs": {"min_free_bytes": 0, **more.pop("jobs", {})},
    }
    for k, v in more.items():
        doc[k] = {**doc.get(k, {}), **v}
    st = await create_state(load_config(yaml.safe_dump(doc)), state_dir=tmp_path / "state")
    st.set_upstream_up(True)  # no probe runs here: a queued job needs the engine seen up
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))
    return st, client


async def _submit(client: TestClient, who: dict[str, str], lyrics: str, seconds: float) -> str:
    body = {"lyrics": lyrics, "description": "pop", "seconds": seconds}
    async with client.post("/generate", json=body, headers={**ASYNC, **who}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def _list(client: TestClient, who: dict[str, str], query: str = "") -> dict[str, Any]:
    async with client.get(f"{JOBS}{query}", headers=who) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        assert r.headers["Cache-Control"] == "no-store"
        return body


async def _view(client: TestClient, job_id: str) -> dict[str, Any]:
    async with client.get(f"{JOBS}/{job_id}") as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def _until_done(client: TestClient, ids: list[str]) -> None:
    for _ in range(200):
        states = [(await _view(client, i))["state"] for i in ids]
        if all(s == "done" for s in states):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("jobs did not finish")


async def test_two_users_each_see_only_their_own_jobs(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """alice lists her two jobs newest first, bob his one; each entry is exactly what
    GET <jobs_path>/<id> shows, with its times; the state filter narrows the list."""
    _, client = await _box(engine, aiohttp_client, tmp_path)
    a1 = await _submit(client, ALICE, "a1", 0.2)
    b1 = await _submit(client, BOB, "b1", 0.2)
    a2 = await _submit(client, ALICE, "a2", 0.2)
    mine = await _list(client, ALICE)
    assert [j["id"] for j in mine["jobs"]] == [a2, a1]
    assert mine["next"] is None and mine["links"]["next"] is None
    assert [j["id"] for j in (await _list(client, BOB))["jobs"]] == [b1]
    await _until_done(client, [a1, a2, b1])
    mine = await _list(client, ALICE)
    assert mine["jobs"] == [await _view(client, a2), await _view(client, a1)]
    newer, older = mine["jobs"]  # RFC 3339 in UTC, newest first, each started and ended
    assert newer["created_at"] >= older["created_at"] and newer["created_at"].endswith("Z")
    assert all(j["started_at"] and j["finished_at"] >= j["started_at"] for j in mine["jobs"])
    assert (await _list(client, ALICE, "?state=queued,running"))["jobs"] == []
    assert [j["id"] for j in (await _list(client, ALICE, "?state=done&limit=1"))["jobs"]] == [a2]
    assert (await _list(client, {"X-User-Id": "carol"}))["jobs"] == []


async def test_a_shared_job_is_listed_under_each_submitter_s_own_id(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Coalesced across client keys: each list shows its own handle, never the other's
    id; bob's DELETE lets go of his handle (his entry reads cancelled) and never ends
    alice's generation."""
    _, client = await _box(
        engine,
        aiohttp_client,
        tmp_path,
        jobs={"coalesce_across_clients": True, "coalesce_vary": []},
    )
    a = await _submit(client, ALICE, "same song", 0.6)
    b = await _submit(client, BOB, "same song", 0.6)
    assert a != b
    alice, bob = await _list(client, ALICE), await _list(client, BOB)
    assert [j["id"] for j in alice["jobs"]] == [a] and [j["id"] for j in bob["jobs"]] == [b]
    assert a not in str(bob) and b not in str(alice)
    async with client.delete(f"{JOBS}/{b}", headers=BOB) as r:
        assert r.status == 200
    (entry,) = (await _list(client, BOB))["jobs"]
    assert entry["state"] == "cancelled" and entry["id"] == b
    (cancelled,) = (await _list(client, BOB, "?state=cancelled"))["jobs"]
    assert cancelled["id"] == b
    await _until_done(client, [a])
    (done,) = (await _list(client, ALICE))["jobs"]
    assert done["state"] == "done" and done["cancel_requested"] is False


def _past_job(store: JobStore, client: str, n: int) -> str:
    """A finished job of ``client`` put straight into the store (its history)."""
    job_id = secrets.token_urlsafe(18)
    w = store.body_writer(job_id)
    w.write(b"{}")
    row = store.create(
        JobRecord(
            id=job_id,
            route="generate",
            client=client,
            held=False,
            method="POST",
            target="/generate",
            headers=(),
            coalesce_key=None,
            created=1000.0 + n,
            body_size=w.commit(),
        )
    )
    store.add_handle(Handle(job_id, job_id, client, False, row.created))
    store.mark_running(job_id, row.created)
    store.finish(job_id, JobState.DONE, None, row.created + 1)
    return job_id


async def test_1000_jobs_page_by_page_while_new_ones_arrive(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """1,000 jobs of alice (and bob's between them), listed 100 a page following next
    (and the Link header) while alice submits more: every job once, newest first; a new
    job appears only on a fresh first page."""
    st, client = await _box(engine, aiohttp_client, tmp_path)
    assert st.jobs is not None
    store = st.jobs.store
    ids = []
    for n in range(1000):
        ids.append(_past_job(store, "hdr:alice", n))
        if n % 10 == 0:
            _past_job(store, "hdr:bob", n)
    seen: list[str] = []
    url: str | None = f"{JOBS}?limit=100"
    new = await _submit(client, ALICE, "while paging", 0.05)
    took = []
    while url is not None:
        started = time.perf_counter()
        async with client.get(url, headers=ALICE) as r:
            page = await r.json()
            took.append(time.perf_counter() - started)
            link = r.headers.get("Link")
        seen += [j["id"] for j in page["jobs"]]
        url = page["links"]["next"]
        assert link == (None if url is None else f'<{url}>; rel="next"')
        await _submit(client, ALICE, f"more {len(seen)}", 0.05)
    assert seen == [new, *ids[::-1]]
    first = await _list(client, ALICE, "?limit=3")
    assert first["jobs"][0]["id"] not in seen  # the newest submit heads a fresh first page
    print(
        f"\n1,000-job list: {len(took)} pages, median {sorted(took)[len(took) // 2] * 1e3:.1f} ms"
    )


@pytest.mark.parametrize(
    ("query", "headers", "status", "reason"),
    [
        ("?limit=0", ALICE, 400, "bad_query"),
        ("?state=finished", ALICE, 400, "bad_query"),
        ("?cursor=nope", ALICE, 400, "bad_query"),
        ("?offset=20", ALICE, 400, "bad_query"),
        ("", {}, 400, "no_client_key"),
    ],
)
async def test_a_bad_listing_request_is_a_json_400(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    query: str,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    """A bad parameter, or no client-key header under jobs.listing auto: 400 with reason
    and detail, in JSON."""
    _, client = await _box(engine, aiohttp_client, tmp_path)
    async with client.get(f"{JOBS}{query}", headers=headers) as r:
        body = await r.json()
        assert r.status == status, body
        assert r.headers["X-Gatekeeper-Reason"] == reason
    assert body["reason"] == reason and body["detail"]


@pytest.mark.parametrize(("mode", "status"), [("auto", 404), ("off", 404), ("on", 200)])
async def test_remote_keys_list_only_when_turned_on(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path, mode: str, status: int
) -> None:
    """With remote client keys the list is off (404 listing_off) unless jobs.listing: on;
    any other method on the list is 405 with Allow."""
    _, client = await _box(
        engine,
        aiohttp_client,
        tmp_path,
        jobs={"listing": mode},
        admission={"queue": {"client_key": "remote", "per_client": 50}},
    )
    async with client.get(JOBS) as r:
        body = await r.json()
        assert r.status == status, body
    if status == 404:
        assert body["reason"] == "listing_off" and "jobs.listing" in body["detail"]
    else:
        assert body["jobs"] == []
    async with client.post(JOBS) as r:
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
