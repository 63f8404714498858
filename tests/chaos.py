"""Randomized chaos driver: the real ``gatekeeper run`` and ``engine-sim`` under hostile traffic.

A run is a list of *phases*. Each phase sends a fixed number of *exchanges*, several at a
time, each one an *action* drawn from a seeded ``random.Random`` (a normal generation, a
client vanishing before its headers are complete, mid-upload or mid-response, a client
task cancelled, an engine that hangs past the read timeout, pass-route traffic...), while
a *fault* task disturbs the system at random moments (engine killed with SIGKILL and
restarted on the same port, SIGHUP with a rewritten rules file, ``POST /reload``). Phases
alternate ``admission.on_client_disconnect`` between ``finish`` and ``cancel`` (switched
by a reload); a ``mixed`` phase also toggles it by reloads mid-phase. After each phase the
driver waits (bounded) for quiescence and checks the invariants:

- ``/status`` and ``/metrics`` report 0 in flight and nothing running;
- ``/status`` counts and rejection reasons equal the sums of the Prometheus counters;
- no sampled ``/status`` or ``gatekeeper_in_flight`` ever exceeded ``max_in_flight``;
- the engine never received more admit-route requests than gatekeeper admitted;
- in ``finish`` phases the engine never ran more than ``max_in_flight`` generations at
  once (in ``cancel`` mode the engine keeps computing what gatekeeper abandoned, as a
  real engine does, so its peak is reported, not bounded);
- a fresh generation is admitted and answered with a WAV;
- no answer carries the other identity's job id or engine answer, while two identities
  send identical requests to a queue route (``chaos_identity``, issue #18 §3).

With ``engines=N`` the driver runs N engine-sims listed in ``upstream.engines`` (one slot
each, so the limit is N), a fault kills and restarts a random one, and the invariants
hold per engine too (``check_engines``): each engine received no more generations than
were admitted to it and, in ``finish`` phases, never ran more than its one at once; in
every sample each ``/status`` engine's in_flight is within its max_in_flight and the
engines' in_flight add up to the total, in ``/status`` and in the gauges; the admitted
requests equal the sum of ``gatekeeper_engine_admitted_total``.

A final phase sends SIGTERM with a generation running: the slot accounting holds while
draining, the generation is delivered, and the process exits 0.

With ``storage=<dir>`` (a small file system the test mounted, issue #18 §1) the state
directory lives there, a ``queue`` route takes jobs (``queued_job``: held jobs with bodies
of up to 512 KiB), and a ``disk_full`` fault fills the file system for a moment and frees
it again; a ``db_deleted`` fault deletes ``jobs.sqlite3`` under the running process,
which must put it back by itself within a few ticks. The invariants above still hold,
and two more: no answer of gatekeeper is a ``500`` or a non-JSON 5xx (every storage
fault is a JSON ``storage_full`` or ``storage_error``), and after the phase the fresh
generation is still served.

The schedule is a function of the seed alone: exchange ``i`` draws its action and
parameters from ``Random(f"{seed}:{i}")``, so a failing seed replays the same shapes (the
interleaving still depends on timing). A violation raises ``InvariantViolation`` carrying
the seed and the phase log. ``check_invariants`` is a plain function over plain values
so that tests can prove it fails on a leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import chaos_identity
from prometheus_client.parser import text_string_to_metric_families
from support import Proc, fill_fs, free_port

# Admit routes of the chaos rules, by engine path; the route name is what metrics label.
ADMIT_ROUTES = {
    "POST /generate": "generate",
    "POST /generate/stream": "generate-stream",
    "GET /_sim/sleep": "hang",
    "GET /_sim/stall": "stall",
    "GET /_sim/abort": "abort",
}
READ_TIMEOUT = 1.5  # gated pool: an engine silent for longer is "hung" (504)
# engine-sim shares its CPU between running songs: at max_in_flight 2 a song of s seconds
# takes up to 2·s. Songs stay short enough that only the "hang" actions ever time out; a
# timed-out song would (rightly) free its slot while the simulator still computes it, and
# the engine-peak invariant would then report the harness's timing, not gatekeeper's.
MAX_SONG = 0.6
BODY_TIMEOUT = 1.0  # limits.client_body_timeout: a trickling upload is dropped (408)
EXCHANGE_TIMEOUT = 15.0  # no exchange may take longer: gatekeeper would be stuck
QUIESCE_TIMEOUT = 15.0
SONG = {"lyrics": "[verse] 海风吹过夏天的街", "description": "pop"}

RULES = """\
upstream:
  timeouts: {{connect: 1s, read: {read}s, write: 2s, pool: 1s}}
  passthrough:
    timeouts: {{connect: 1s, read: 5s, write: 2s, pool: 2s}}
  probe: {{interval: 200ms, timeout: 500ms}}
{engines}limits:
  client_body_timeout: {body}s
  client_send_timeout: 2s
admission:
{max_in_flight}  on_client_disconnect: {mode}
  sample_interval: 100ms
  expected_seconds: 1
  retry_after_default: {retry_after}
  resources: {{source: file, file: {readings}}}
  queue: {{per_client: 100, max_waiting: 200}}
routes:
  - {{name: generate, match: {{methods: [POST], path: /generate}}, action: admit}}
  - {{name: generate-stream, match: {{methods: [POST], path: /generate/stream}}, action: admit}}
  - {{name: hang, match: {{methods: [GET], path: /_sim/sleep}}, action: admit}}
  - {{name: stall, match: {{methods: [GET], path: /_sim/stall}}, action: admit}}
  - {{name: abort, match: {{methods: [GET], path: /_sim/abort}}, action: admit}}
  - {{name: batch, match: {{methods: [POST], path: /batch-generate}}, action: block, status: 410}}
{queue_route}{shared}shutdown: {{drain_timeout: 10s, drain_log_interval: 1s, linger: 0s}}
alerts: {{rules: []}}
{jobs}"""
QUEUE_ROUTE = (
    "  - {name: queued, match: {methods: [POST], path: /_sim/echo/queued}, action: queue}\n"
)
QUEUED_PATH = "/_sim/echo/queued"
MIN_FREE = 1024**2  # jobs.min_free_bytes of a storage run


class InvariantViolation(AssertionError):
    """An invariant failed; the message carries the seed and the phase log to replay it."""


# --------------------------------------------------------------------------- observations


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric_sum(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


@dataclass
class EngineLedger:
    """What the engine saw during one phase, summed over its restarts."""

    peak_active: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    restarts: int = 0

    def fold(self, stats: dict[str, Any]) -> None:
        self.peak_active = max(self.peak_active, int(stats["peak_active_generations"]))
        self.requests.update({k: int(v) for k, v in stats["requests"].items()})


@dataclass(frozen=True)
class Observation:
    """Plain values read at the end of a phase; the input of :func:`check_invariants`."""

    status: dict[str, Any]
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]
    engine_peak_active: int  # most generations the engine ran at once
    engine_requests: dict[str, int]  # "METHOD /path" -> requests the engine received
    admitted_delta: dict[str, int]  # route -> admissions during the phase (metrics)
    sampled_in_flight_max: int  # highest in_flight seen while the phase ran
    max_in_flight: int
    mode: str  # on_client_disconnect of the phase
    fresh_generation: int | None  # status of the generation sent after quiescence
    # Several engines (issue #11 §1); empty with the single ``--upstream`` engine's
    # defaults, where the totals above say it all.
    engine_slots: dict[str, int] = field(default_factory=dict)  # name -> max_in_flight
    engine_peaks: dict[str, int] = field(default_factory=dict)  # name -> its own peak
    engine_received: dict[str, int] = field(default_factory=dict)  # name -> admit requests
    engine_admitted_delta: dict[str, int] = field(default_factory=dict)  # name -> metric delta
    samples: tuple[Sample, ...] = ()  # /status and /metrics read while the phase ran


@dataclass(frozen=True)
class Sample:
    """One look, while a phase runs, at the per-engine counts: ``status`` from one
    ``/status`` document, ``gauges`` from one ``/metrics`` scrape (each is one
    synchronous step in gatekeeper, so its own numbers must add up)."""

    status_in_flight: int
    status_engines: dict[str, tuple[int, int]]  # name -> (in_flight, max_in_flight)
    gauge_in_flight: float
    gauge_engines: dict[str, float]  # gatekeeper_engine_in_flight by engine


def sample_of(
    status: dict[str, Any], metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]
) -> Sample:
    return Sample(
        status_in_flight=int(status["in_flight"]),
        status_engines={
            e["name"]: (int(e["in_flight"]), int(e["max_in_flight"])) for e in status["engines"]
        },
        gauge_in_flight=metric_sum(metrics, "gatekeeper_in_flight"),
        gauge_engines={
            dict(ls)["engine"]: v
            for (n, ls), v in metrics.items()
            if n == "gatekeeper_engine_in_flight"
        },
    )


def check_engines(obs: Observation) -> list[str]:
    """The per-engine invariants (issue #11 §1): each engine within its own slots, the
    per-engine counts adding up to the totals, and every admission counted on one engine."""
    bad: list[str] = []
    for name, slots in obs.engine_slots.items():
        seen, admitted = obs.engine_received.get(name, 0), obs.engine_admitted_delta.get(name, 0)
        if seen > admitted:
            bad.append(f"engine {name} received {seen} generations but was admitted {admitted}")
        peak = obs.engine_peaks.get(name, 0)
        if obs.mode == "finish" and peak > slots:
            bad.append(f"engine {name} ran {peak} generations at once > its max_in_flight {slots}")
    # Admit routes' admissions, plus every queue job started (a queue route's request
    # may wait, so its generation is counted when its job starts, not at arrival).
    total = sum(
        metric_sum(obs.metrics, "gatekeeper_requests_total", route=route, outcome="admitted")
        for route in ADMIT_ROUTES.values()
    ) + metric_sum(obs.metrics, "gatekeeper_jobs_total", state="running")
    on_engines = metric_sum(obs.metrics, "gatekeeper_engine_admitted_total")
    if total != on_engines:
        bad.append(
            f"admitted requests {total:g} != sum of gatekeeper_engine_admitted_total {on_engines:g}"
        )
    for i, s in enumerate(obs.samples):
        for name, (n, slots) in s.status_engines.items():
            if n > slots:
                bad.append(
                    f"sample {i}: /status engine {name} in_flight {n} > max_in_flight {slots}"
                )
        listed = sum(n for n, _ in s.status_engines.values())
        if listed != s.status_in_flight:
            bad.append(
                f"sample {i}: /status engines' in_flight sum {listed} != in_flight "
                f"{s.status_in_flight}"
            )
        gauges = sum(s.gauge_engines.values())
        if gauges != s.gauge_in_flight:
            bad.append(
                f"sample {i}: gatekeeper_engine_in_flight sum {gauges} != gatekeeper_in_flight "
                f"{s.gauge_in_flight}"
            )
    return bad


def check_invariants(obs: Observation) -> list[str]:
    """Every invariant ``obs`` breaks, as sentences (empty: all hold)."""
    bad: list[str] = []
    st, m = obs.status, obs.metrics
    gauge = metric_sum(m, "gatekeeper_in_flight")
    if st["in_flight"] != 0:
        bad.append(f"/status in_flight is {st['in_flight']} at quiescence (leaked slot)")
    if gauge != 0:
        bad.append(f"gatekeeper_in_flight is {gauge} at quiescence (leaked slot)")
    if st["running"]:
        bad.append(f"/status still lists running generations: {st['running']}")
    if st["in_flight"] != gauge:
        bad.append(f"/status in_flight {st['in_flight']} != gatekeeper_in_flight {gauge}")
    for outcome, n in st["counts"].items():
        total = metric_sum(m, "gatekeeper_requests_total", outcome=outcome)
        if n != total:
            bad.append(f"/status counts[{outcome}]={n} != gatekeeper_requests_total {total}")
    for reason, n in st["rejections_by_reason"].items():
        total = metric_sum(m, "gatekeeper_rejections_total", reason=reason)
        if n != total:
            bad.append(f"/status rejections[{reason}]={n} != gatekeeper_rejections_total {total}")
    if obs.sampled_in_flight_max > obs.max_in_flight:
        bad.append(
            f"in_flight reached {obs.sampled_in_flight_max} > max_in_flight {obs.max_in_flight}"
        )
    for path, route in ADMIT_ROUTES.items():
        seen, admitted = obs.engine_requests.get(path, 0), obs.admitted_delta.get(route, 0)
        if seen > admitted:
            bad.append(f"engine received {seen} {path} but gatekeeper admitted {admitted}")
    if obs.mode == "finish" and obs.engine_peak_active > obs.max_in_flight:
        bad.append(
            f"engine ran {obs.engine_peak_active} generations at once "
            f"> max_in_flight {obs.max_in_flight} (over-admission)"
        )
    if obs.fresh_generation != 200:
        bad.append(f"a fresh generation after quiescence got {obs.fresh_generation}, not 200")
    return bad + check_engines(obs)


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class Target:
    """Where the exchanges go; ``proxy`` is ``host, port`` of gatekeeper's public listener."""

    host: str
    port: int


async def _connect(t: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(t.host, t.port)


def _head(method: str, path: str, length: int | None = None, ctype: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: chaos", "Connection: close"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status_of(data: bytes) -> int:
    if not data.startswith(b"HTTP/1."):
        return 0  # connection closed without an answer
    return int(data.split(b" ", 2)[1])


async def _exchange_head(t: Target, raw: bytes) -> tuple[int, bytes]:
    """Send ``raw``, read until the server closes; (status, the answer's head)."""
    reader, writer = await _connect(t)
    try:
        writer.write(raw)
        await writer.drain()
        data = await reader.read()
    except ConnectionError:
        return 0, b""
    finally:
        writer.transport.abort()
    return _status_of(data), data.partition(b"\r\n\r\n")[0]


async def _exchange(t: Target, raw: bytes) -> int:
    """Send ``raw``, read until the server closes; the status (0: no answer)."""
    reader, writer = await _connect(t)
    try:
        writer.write(raw)
        await writer.drain()
        data = await reader.read()
    except ConnectionError:
        return 0
    finally:
        writer.transport.abort()
    return _status_of(data)


def _song(rng: random.Random, lo: float, hi: float) -> bytes:
    hi = min(hi, MAX_SONG)
    return json.dumps({**SONG, "seconds": round(rng.uniform(min(lo, hi), hi), 3)}).encode()


# --------------------------------------------------------------------------- actions
# Each action does one exchange and returns an outcome label (usually the status code).
# ``rng`` is the exchange's own Random, so its shape depends on the seed alone.

Action = Callable[["Chaos", random.Random], Awaitable[str]]


async def gen_ok(c: Chaos, rng: random.Random) -> str:
    """A normal generation, read to its end."""
    body = _song(rng, 0.05, 0.4)  # below the read timeout: the engine is silent until done
    return str(await _exchange(c.target, _head("POST", "/generate", len(body)) + body))


async def gen_stream_ok(c: Chaos, rng: random.Random) -> str:
    """An SSE generation read to its end (progress events keep the read timeout away)."""
    body = _song(rng, 0.2, 1.0)
    return str(await _exchange(c.target, _head("POST", "/generate/stream", len(body)) + body))


async def drop_before_headers(c: Chaos, rng: random.Random) -> str:
    """The client vanishes before its request head is complete."""
    body = _song(rng, 0.1, 0.5)
    raw = _head("POST", "/generate", len(body)) + body
    cut = rng.randrange(1, raw.index(b"\r\n\r\n") + 3)
    _, writer = await _connect(c.target)
    writer.write(raw[:cut])
    await writer.drain()
    await asyncio.sleep(rng.uniform(0, 0.3))
    writer.transport.abort()
    return "dropped"


async def drop_mid_upload(c: Chaos, rng: random.Random) -> str:
    """Content-Length declared, part of the body sent, then the client vanishes."""
    body = _song(rng, 0.1, 0.5) + b" " * rng.randrange(0, 200_000)
    cut = rng.randrange(1, len(body))
    _, writer = await _connect(c.target)
    writer.write(_head("POST", "/generate", len(body), "application/json") + body[:cut])
    await writer.drain()
    await asyncio.sleep(rng.uniform(0, 0.5))
    writer.transport.abort()
    return "dropped"


async def stall_upload(c: Chaos, rng: random.Random) -> str:
    """Part of a declared body, then silence past client_body_timeout: 408 (or a rejection)."""
    body = _song(rng, 0.1, 0.5)
    reader, writer = await _connect(c.target)
    try:
        writer.write(_head("POST", "/generate", len(body) + 10) + body)
        await writer.drain()
        # Only the head: after answering, aiohttp lingers (app.LINGER_SECONDS) for the rest.
        data = await reader.readuntil(b"\r\n\r\n")
    except (ConnectionError, asyncio.IncompleteReadError):
        return "0"
    finally:
        writer.transport.abort()
    return str(_status_of(data))


async def drop_mid_response(c: Chaos, rng: random.Random) -> str:
    """The whole request sent; the client vanishes while the engine works or streams."""
    path = rng.choice(["/generate", "/generate/stream"])
    body = _song(rng, 0.2, 0.9)
    reader, writer = await _connect(c.target)
    writer.write(_head("POST", path, len(body)) + body)
    await writer.drain()
    got = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(rng.uniform(0.05, 0.8)):
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                got += chunk
    writer.transport.abort()
    return str(_status_of(got)) if got else "dropped"


async def cancel_task(c: Chaos, rng: random.Random) -> str:
    """An aiohttp client request whose task is cancelled after a random delay."""
    path = rng.choice(["/generate", "/generate/stream"])
    song = {**SONG, "seconds": round(rng.uniform(0.2, MAX_SONG), 3)}

    async def one() -> int:
        async with c.http.post(c.proxy + path, json=song) as r:
            await r.read()
            return r.status

    task = asyncio.create_task(one())
    done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, 0.8))
    if done:
        return str(task.result()) if task.exception() is None else "error"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await task
    return "cancelled"


async def hang(c: Chaos, rng: random.Random) -> str:
    """An admitted request the engine answers only after the read timeout: 504."""
    secs = round(READ_TIMEOUT + rng.uniform(0.3, 1.5), 2)
    return str(await _exchange(c.target, _head("GET", f"/_sim/sleep?seconds={secs}")))


async def stall_response(c: Chaos, rng: random.Random) -> str:
    """The engine sends part of its body, then stalls past the read timeout."""
    path = f"/_sim/stall?after={rng.randrange(1, 5000)}&seconds={READ_TIMEOUT + 1}&tail=10"
    return str(await _exchange(c.target, _head("GET", path)))


async def engine_abort(c: Chaos, rng: random.Random) -> str:
    """The engine aborts its TCP connection mid-body."""
    return str(
        await _exchange(c.target, _head("GET", f"/_sim/abort?after={rng.randrange(1, 9000)}"))
    )


async def pass_traffic(c: Chaos, rng: random.Random) -> str:
    """Pass routes meanwhile: progress polls, health, echo uploads, small downloads."""
    kind = rng.choice(["progress", "healthz", "echo", "download", "blocked"])
    if kind == "echo":
        body = rng.randbytes(rng.randrange(0, 50_000))
        return str(await _exchange(c.target, _head("POST", "/_sim/echo", len(body)) + body))
    if kind == "blocked":
        return str(await _exchange(c.target, _head("POST", "/batch-generate", 2) + b"{}"))
    path = {
        "progress": "/progress",
        "healthz": "/healthz",
        "download": f"/download?bytes={rng.randrange(0, 300_000)}",
    }[kind]
    return str(await _exchange(c.target, _head("GET", path)))


async def pass_drop(c: Chaos, rng: random.Random) -> str:
    """A pass-route download the client abandons half way."""
    reader, writer = await _connect(c.target)
    writer.write(_head("GET", "/download?bytes=5000000"))
    await writer.drain()
    with contextlib.suppress(ConnectionError):
        await reader.read(rng.randrange(1, 100_000))
    writer.transport.abort()
    return "dropped"


async def pipelined(c: Chaos, rng: random.Random) -> str:
    """Two keep-alive requests written at once on one connection, maybe abandoned early."""
    first, second = _song(rng, 0.05, 0.4), _song(rng, 0.05, 0.4)
    raw = b""
    for body in (first, second):
        raw += _head("POST", "/generate", len(body)).replace(b"Connection: close", b"X-K: 1")
        raw += body
    reader, writer = await _connect(c.target)
    writer.write(raw)
    await writer.drain()
    got = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(rng.choice([0.1, 0.5, 3.0])):
            while got.count(b"HTTP/1.1 ") < 2 or not got.endswith(b"}"):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
    writer.transport.abort()
    return f"answers={got.count(b'HTTP/1.1 ')}"


async def burst(c: Chaos, rng: random.Random) -> str:
    """5-20 generations at the same instant: a race for the slot (at most max_in_flight win)."""
    n = rng.randrange(5, 21)
    statuses = await asyncio.gather(*(gen_ok(c, random.Random(rng.random())) for _ in range(n)))
    return f"won={statuses.count('200')}"


async def queued_job(c: Chaos, rng: random.Random) -> str:
    """A held job on the queue route (storage runs), with a body of up to 512 KiB; a 5xx
    must be gatekeeper's JSON (storage_full, storage_error, ...), never a bare 500."""
    body = rng.randbytes(rng.randrange(1, 512 * 1024))
    status, head = await _exchange_head(
        c.target, _head("POST", QUEUED_PATH, len(body), "application/octet-stream") + body
    )
    if status >= 500 and (status == 500 or b"application/json" not in head.lower()):
        c.bad_answers.append(head.decode("latin-1")[:300])
    reason = next(
        (
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-gatekeeper-reason:")
        ),
        "",
    )
    return f"{status} {reason}".strip()


ACTIONS: dict[str, tuple[Action, int]] = {
    "burst": (burst, 1),
    "pipelined": (pipelined, 1),
    "gen_ok": (gen_ok, 4),
    "gen_stream_ok": (gen_stream_ok, 1),
    "drop_before_headers": (drop_before_headers, 2),
    "drop_mid_upload": (drop_mid_upload, 2),
    "stall_upload": (stall_upload, 1),
    "drop_mid_response": (drop_mid_response, 3),
    "cancel_task": (cancel_task, 2),
    "hang": (hang, 1),
    "stall_response": (stall_response, 1),
    "engine_abort": (engine_abort, 1),
    "pass_traffic": (pass_traffic, 4),
    "pass_drop": (pass_drop, 1),
    # coalescing between two identities (issue #18 §3): chaos_identity
    "identities": (chaos_identity.identities, 2),
}


# --------------------------------------------------------------------------- the driver


@dataclass
class PhaseResult:
    index: int
    mode: str
    limit: int
    exchanges: int
    seconds: float
    outcomes: dict[str, Counter[str]]
    faults: Counter[str]
    engine_peak_active: int
    violations: list[str]
    engine_peaks: dict[str, int] = field(default_factory=dict)  # each engine's own


class Chaos:
    """Owns the processes and runs phases; use as ``async with Chaos(...) as c``."""

    def __init__(
        self,
        tmp: Path,
        seed: int,
        *,
        concurrency: int = 4,
        think: float = 0.15,
        max_in_flight: int = 1,
        gatekeeper_max_in_flight: int | None = None,
        actions: dict[str, tuple[Action, int]] | None = None,
        faults: bool = True,
        engines: int = 0,
        storage: Path | None = None,
        fault_gap: tuple[float, float] = (1.0, 3.0),
    ) -> None:
        """``engines`` 0: one engine-sim given by ``--upstream``; N: N engine-sims listed in
        ``upstream.engines`` (gpu0...), one slot each, so the limit is N (issue #11 §1).
        ``fault_gap``: the range of the random pause between two faults, seconds (the
        tests' short runs use a shorter one: as many faults in fewer exchanges)."""
        self.tmp = tmp
        self.seed = seed
        self.concurrency = concurrency
        self.think = think  # mean pause of a worker between two exchanges, seconds
        self.listed = engines > 0
        if self.listed:
            max_in_flight = engines  # the sum of the engines' one slot each
        self.max_in_flight = max_in_flight  # the limit the invariants hold gatekeeper to
        # What gatekeeper is actually configured with; differs only to prove the checker
        # catches over-admission.
        self.configured_max = gatekeeper_max_in_flight or max_in_flight
        self.limit_offset = self.configured_max - max_in_flight
        self.storage = storage  # a small file system for the state dir: disk_full faults
        self.actions = actions or (
            {**ACTIONS, "queued_job": (queued_job, 4)} if storage is not None else ACTIONS
        )
        self.bad_answers: list[str] = []  # 5xx answers that were not gatekeeper's JSON
        self.faults_enabled = faults
        self.fault_gap = fault_gap
        self.rng = random.Random(seed)
        self.log: list[str] = []
        self.mode = "finish"  # on_client_disconnect in the rules file now
        self.phase_mode = "finish"  # the phase's: finish, cancel or mixed (toggled by reloads)
        self.retry_after = 3
        self.reloads = 0
        self.next_exchange = 0
        # One engine-sim per name; the single --upstream engine is gatekeeper's "default".
        self.engine_names = [f"gpu{i}" for i in range(engines)] if self.listed else ["default"]
        self.engine_ports = {name: free_port() for name in self.engine_names}
        self.engine_urls = {n: f"http://127.0.0.1:{p}" for n, p in self.engine_ports.items()}
        self.engine_url = self.engine_urls[self.engine_names[0]]  # a single-engine run's
        self.rules = tmp / "chaos-rules.yaml"
        self.readings = tmp / "calm.json"
        self.readings.write_text('{"cpu_percent": 5, "memory_percent": 5}')
        self.results: list[PhaseResult] = []
        self.slowest: dict[str, float] = {}  # action -> longest exchange, seconds
        self.drain_outcomes: dict[str, Counter[str]] = {}  # traffic during the SIGTERM drain
        self._ledgers = {name: EngineLedger() for name in self.engine_names}
        self._engine_lock = asyncio.Lock()

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Chaos:
        self.engines: dict[str, Proc] = {}
        self._write_rules()
        port, admin_port = free_port(), free_port()
        try:
            for name in self.engine_names:
                self.engines[name] = self._start_engine(name)
            self.gk = self._start_gatekeeper(port, admin_port)
        except BaseException:
            for engine in self.engines.values():
                engine.stop()
            raise
        self.target = Target("127.0.0.1", port)
        self.proxy = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        self.http = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=EXCHANGE_TIMEOUT)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        self.gk.stop()
        for engine in self.engines.values():
            engine.stop()

    def _start_gatekeeper(self, port: int, admin_port: int) -> Proc:
        return Proc(
            [
                "run",
                "--config",
                str(self.rules),
                *(() if self.listed else ("--upstream", self.engine_url)),
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                f"127.0.0.1:{admin_port}",
            ],
            self.tmp / "gatekeeper.log",
            ready=r"admin listening on http://",
        )

    def _start_engine(self, name: str) -> Proc:
        port = self.engine_ports[name]
        args = ["engine-sim", "--listen", f"127.0.0.1:{port}", "--seconds", "0.5"]
        args += ["--no-cpu", "--memory-mb", "0"]
        n = self._ledgers[name].restarts
        log = self.tmp / (f"engine-{n}.log" if not self.listed else f"engine-{name}-{n}.log")
        return Proc(args, log, ready=r"listening on http://")

    def _write_rules(self) -> None:
        if self.listed:
            engines = "  engines:\n" + "".join(
                f'    - {{name: {n}, url: "{u}", max_in_flight: 1}}\n'
                for n, u in self.engine_urls.items()
            )
            limit = ""  # the engines' sum; setting it too is an error
        else:
            engines, limit = "", f"  max_in_flight: {self.configured_max}\n"
        self.rules.write_text(
            RULES.format(
                read=READ_TIMEOUT,
                body=BODY_TIMEOUT,
                engines=engines,
                max_in_flight=limit,
                mode=self.mode,
                retry_after=self.retry_after,
                readings=self.readings,
                queue_route=QUEUE_ROUTE if self.storage is not None else "",
                jobs=(
                    f"jobs: {{dir: {self.storage / 'state'}, min_free_bytes: {MIN_FREE}}}\n"
                    if self.storage is not None
                    else ""
                ),
                shared=chaos_identity.ROUTE.format(),
            )
        )

    def note(self, line: str) -> None:
        self.log.append(f"{time.monotonic():.3f} {line}")

    # ---------------------------------------------------------------- reading state

    async def _json(self, url: str) -> Any:
        async with self.http.get(url) as r:
            return await r.json()

    async def status(self) -> dict[str, Any]:
        return dict(await self._json(self.admin + "/status"))

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        async with self.http.get(self.admin + "/metrics") as r:
            return parse_metrics(await r.text())

    async def engine_stats(self, name: str | None = None) -> dict[str, Any] | None:
        """``/_sim/stats`` of engine ``name`` (default: the first)."""
        url = self.engine_urls[name or self.engine_names[0]]
        try:
            return dict(await self._json(url + "/_sim/stats"))
        except (aiohttp.ClientError, TimeoutError):
            return None  # between a kill and its restart

    def admitted(
        self, metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]
    ) -> dict[str, int]:
        return {
            route: int(
                metric_sum(metrics, "gatekeeper_requests_total", route=route, outcome="admitted")
            )
            for route in ADMIT_ROUTES.values()
        }

    # ---------------------------------------------------------------- faults

    async def kill_engine(self) -> None:
        """SIGKILL an engine (a random one of several; mid-job, likely) and restart it on
        the same port."""
        name = self.rng.choice(self.engine_names)
        async with self._engine_lock:
            stats = await self.engine_stats(name)
            if stats is not None:
                self._ledgers[name].fold(stats)
            self.engines[name].kill()
            self.note(f"fault: engine {name} killed")
            await asyncio.sleep(self.rng.uniform(0.0, 0.5))
            self._ledgers[name].restarts += 1
            self.engines[name] = await asyncio.to_thread(self._start_engine, name)
            self.note(f"fault: engine {name} restarted")

    async def disk_full(self, stop: asyncio.Event) -> None:
        """Fill the state directory's file system, hold it full a moment, free it."""
        assert self.storage is not None
        filler = fill_fs(self.storage)
        self.note(f"fault: disk full ({filler.stat().st_size >> 10} KiB filler)")
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.uniform(0.3, 1.5)):
                    await stop.wait()
        finally:
            filler.unlink()
            self.note("fault: disk space back")

    async def db_deleted(self) -> None:
        """``rm jobs.sqlite3`` under the running gatekeeper (issue #18 §1): it must be put
        back at its path by itself, whole, within a few ticks (``jobs.dbwatch``)."""
        assert self.storage is not None
        db = self.storage / "state" / "jobs.sqlite3"
        db.unlink(missing_ok=True)
        self.note("fault: job database deleted")
        deadline = time.monotonic() + 6  # dbwatch.RETRY_SECONDS if the disk was full
        while not db.exists():
            if time.monotonic() > deadline:
                raise InvariantViolation(self._report("the deleted job database never came back"))
            await asyncio.sleep(0.05)
        self.note("fault: job database back at its path")

    async def reload(self, how: str) -> None:
        """Rewrite the rules (retry_after changes; mode and limit kept) and reload."""
        self.retry_after = 2 + (self.retry_after % 5)
        self._write_rules()
        before = metric_sum(
            await self.metrics(), "gatekeeper_config_reloads_total", result="success"
        )
        if how == "sighup":
            self.gk.signal(signal.SIGHUP)
        else:
            async with self.http.post(self.admin + "/reload") as r:
                if r.status != 200:
                    raise InvariantViolation(
                        self._report(f"POST /reload answered {r.status}: {await r.text()}")
                    )
        deadline = time.monotonic() + 5
        while (
            metric_sum(await self.metrics(), "gatekeeper_config_reloads_total", result="success")
            <= before
        ):
            if time.monotonic() > deadline:
                raise InvariantViolation(self._report(f"reload by {how} never succeeded"))
            await asyncio.sleep(0.05)
        self.reloads += 1
        self.note(f"fault: reload by {how} (mode {self.mode}, retry_after {self.retry_after})")

    async def set_mode(self, mode: str) -> None:
        self.mode = mode
        await self.reload(self.rng.choice(["sighup", "post"]))

    async def _fault_loop(self, faults: Counter[str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.uniform(*self.fault_gap)):
                    await stop.wait()
            if stop.is_set():
                return
            kinds = ["kill_engine", "sighup", "post_reload", "toggle_mode", "disk_full"]
            weights = [2, 1, 1, 0, 3 if self.storage is not None else 0]
            kinds.append("db_deleted")  # the database deleted under it (storage runs)
            weights.append(1 if self.storage is not None else 0)
            if self.phase_mode == "mixed":
                weights[3] = 3
            kind = self.rng.choices(kinds, weights)[0]
            faults[kind] += 1
            if kind == "kill_engine":
                await self.kill_engine()
            elif kind == "disk_full":
                await self.disk_full(stop)
            elif kind == "db_deleted":
                await self.db_deleted()
            elif kind == "toggle_mode":
                await self.set_mode("cancel" if self.mode == "finish" else "finish")
            else:
                await self.reload("sighup" if kind == "sighup" else "post")

    async def _sampler(self, peak: list[int], samples: list[Sample], stop: asyncio.Event) -> None:
        """Watch /status and the gauges while the phase runs: neither may exceed the limit,
        nor any engine its own (``samples``, checked by ``check_engines``)."""
        while not stop.is_set():
            st = await self.status()
            metrics = await self.metrics()
            gauge = int(metric_sum(metrics, "gatekeeper_in_flight"))
            peak[0] = max(peak[0], st["in_flight"], gauge)
            samples.append(sample_of(st, metrics))
            await asyncio.sleep(0.03)

    # ---------------------------------------------------------------- phases

    def _schedule(self, n: int) -> list[tuple[int, str]]:
        """The next ``n`` exchanges, drawn from shuffled decks: each deck holds every action
        as many times as its weight, so any run of a deck's length or more (30 exchanges
        with the default actions) sends every hostile action, in a seeded random order."""
        deck = [name for name, (_, weight) in self.actions.items() for _ in range(weight)]
        out = []
        for _ in range(n):
            i = self.next_exchange
            self.next_exchange += 1
            order = list(deck)
            random.Random(f"{self.seed}:deck:{i // len(deck)}").shuffle(order)
            out.append((i, order[i % len(deck)]))
        return out

    async def _run_one(self, i: int, name: str, outcomes: dict[str, Counter[str]]) -> None:
        rng = random.Random(f"{self.seed}:{i}:params")
        action = self.actions[name][0]
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                outcome = await action(self, rng)
        except TimeoutError:
            outcome = "STUCK"
            self.note(f"exchange {i} {name} took over {EXCHANGE_TIMEOUT}s")
        except (ConnectionError, aiohttp.ClientError, asyncio.IncompleteReadError):
            outcome = "conn_error"
        outcomes.setdefault(name, Counter())[outcome] += 1
        took = time.monotonic() - t0
        self.slowest[name] = max(self.slowest.get(name, 0.0), took)
        if took > 2 * READ_TIMEOUT:
            self.note(f"exchange {i} {name} -> {outcome} took {took:.2f}s")

    async def phase(self, exchanges: int, mode: str, limit: int | None = None) -> PhaseResult:
        """Run one phase in ``mode`` and ``limit``, check the invariants; raise on a violation.

        The mode and the limit change by a reload at the start, never mid-phase: lowering the
        limit under running generations legitimately leaves more running than the new limit.
        """
        index = len(self.results)
        limit = limit or self.max_in_flight
        if self.listed and limit != self.max_in_flight:
            raise ValueError(f"{len(self.engine_names)} one-slot engines: the limit is theirs")
        self.phase_mode = mode
        start_mode = "finish" if mode == "mixed" else mode
        if start_mode != self.mode or limit != self.max_in_flight:
            self.max_in_flight, self.configured_max = limit, limit + self.limit_offset
            await self.set_mode(start_mode)
        self.note(f"phase {index} start: mode {mode}, limit {limit}, {exchanges} exchanges")
        await self._engine_reset()
        base_metrics = await self.metrics()
        base, base_engines = self.admitted(base_metrics), self.engine_admitted(base_metrics)
        outcomes: dict[str, Counter[str]] = {}
        faults: Counter[str] = Counter()
        peak = [0]
        samples: list[Sample] = []
        stop = asyncio.Event()
        background = [asyncio.create_task(self._sampler(peak, samples, stop))]
        if self.faults_enabled:
            background.append(asyncio.create_task(self._fault_loop(faults, stop)))
        queue = self._schedule(exchanges)
        t0 = time.monotonic()

        async def worker() -> None:
            while queue:
                i, name = queue.pop(0)
                # Think time, so that the slot is often free when an exchange arrives.
                await asyncio.sleep(
                    random.Random(f"{self.seed}:{i}:think").expovariate(1 / self.think)
                )
                await self._run_one(i, name, outcomes)

        try:
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            stop.set()
            await asyncio.gather(*background)
        seconds = time.monotonic() - t0
        stuck = sum(c["STUCK"] for c in outcomes.values())
        status, metrics = await self._quiesce()
        ledgers = await self._engine_fold()
        engine = EngineLedger()  # all engines: their requests summed, the highest peak
        for ledger in ledgers.values():
            engine.peak_active = max(engine.peak_active, ledger.peak_active)
            engine.requests.update(ledger.requests)
        fresh = await self._fresh_generation()
        after = await self.metrics()
        obs = Observation(
            status=status,
            metrics=metrics,
            engine_peak_active=engine.peak_active,
            engine_requests=dict(engine.requests),
            admitted_delta={k: v - base.get(k, 0) for k, v in self.admitted(after).items()},
            sampled_in_flight_max=peak[0],
            max_in_flight=self.max_in_flight,
            mode=mode,
            fresh_generation=fresh,
            engine_slots=(
                dict.fromkeys(self.engine_names, 1)
                if self.listed
                else {"default": self.max_in_flight}
            ),
            engine_peaks={n: lg.peak_active for n, lg in ledgers.items()},
            engine_received={
                n: sum(lg.requests.get(path, 0) for path in ADMIT_ROUTES)
                for n, lg in ledgers.items()
            },
            engine_admitted_delta={
                n: v - base_engines.get(n, 0) for n, v in self.engine_admitted(after).items()
            },
            samples=tuple(samples),
        )
        violations = check_invariants(obs)
        if self.bad_answers:
            violations.append(
                f"{len(self.bad_answers)} 5xx answer(s) not gatekeeper's JSON:"
                f" {self.bad_answers[0]}"
            )
            self.bad_answers.clear()
        if stuck:
            violations.append(f"{stuck} exchange(s) took longer than {EXCHANGE_TIMEOUT}s")
        if crossed := chaos_identity.crossed(outcomes):
            violations.append(f"{crossed} exchange(s) crossed identities (chaos_identity)")
        if "Traceback" in self.gk.output():
            violations.append("gatekeeper logged a traceback")
        result = PhaseResult(
            index,
            mode,
            limit,
            exchanges,
            seconds,
            outcomes,
            faults,
            engine.peak_active,
            violations,
            obs.engine_peaks,
        )
        self.results.append(result)
        self.note(
            f"phase {index} end: {seconds:.1f}s, faults {dict(faults)}, violations {violations}"
        )
        if violations:
            raise InvariantViolation(self._report("; ".join(violations)))
        return result

    async def _engine_reset(self) -> None:
        """Wait until every engine is idle (abandoned cancel-mode work ends), then reset it."""
        for name, url in self.engine_urls.items():
            deadline = time.monotonic() + QUIESCE_TIMEOUT
            while True:
                stats = await self.engine_stats(name)
                if stats is not None and stats["active_generations"] == 0:
                    break
                if time.monotonic() > deadline:
                    raise InvariantViolation(
                        self._report(f"engine {name} never went idle: {stats}")
                    )
                await asyncio.sleep(0.05)
            async with self.http.post(url + "/_sim/reset") as r:
                assert r.status == 200
            self._ledgers[name] = EngineLedger(restarts=self._ledgers[name].restarts)

    async def _engine_fold(self) -> dict[str, EngineLedger]:
        """Each engine's ledger of the phase (its last stats folded in); fresh ones start."""
        async with self._engine_lock:
            out = {}
            for name, ledger in self._ledgers.items():
                stats = await self.engine_stats(name)
                if stats is not None:
                    ledger.fold(stats)
                out[name] = ledger
                self._ledgers[name] = EngineLedger(restarts=ledger.restarts)
            return out

    def engine_admitted(
        self, metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]
    ) -> dict[str, int]:
        return {
            name: int(metric_sum(metrics, "gatekeeper_engine_admitted_total", engine=name))
            for name in self.engine_names
        }

    async def _quiesce(
        self,
    ) -> tuple[dict[str, Any], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
        """Wait (bounded) until nothing runs; return the last /status and metrics read."""
        deadline = time.monotonic() + QUIESCE_TIMEOUT
        while True:
            status, metrics = await self.status(), await self.metrics()
            if status["in_flight"] == 0 and metric_sum(metrics, "gatekeeper_in_flight") == 0:
                return status, metrics
            if time.monotonic() > deadline:
                return status, metrics  # the checker reports the leak
            await asyncio.sleep(0.05)

    async def _fresh_generation(self) -> int | None:
        """One generation on an idle system must be admitted (allow the probe to see the engine)."""
        last: int | None = None
        for _ in range(3):
            body = json.dumps({**SONG, "seconds": 0.05}).encode()
            try:
                last = await _exchange(self.target, _head("POST", "/generate", len(body)) + body)
            except OSError:
                last = None
            if last == 200:
                return 200
            await asyncio.sleep(0.3)
        return last

    # ---------------------------------------------------------------- shutdown

    async def sigterm_phase(self) -> dict[str, Any]:
        """SIGTERM with a generation running and hostile traffic: accounting holds, exit 0."""
        self.note("phase sigterm start")
        # The simulator shares its CPU between generations: work a cancel phase abandoned
        # would stretch this 1 s song past the 1.5 s read timeout (a 504 that says nothing
        # about the drain). Start it on an idle engine.
        await self._engine_reset()
        body = json.dumps({**SONG, "seconds": 1.0}).encode()
        song = asyncio.create_task(
            _exchange(self.target, _head("POST", "/generate", len(body)) + body)
        )
        deadline = time.monotonic() + 5
        while (await self.status())["in_flight"] != 1:
            if time.monotonic() > deadline:
                raise InvariantViolation(self._report("the drain phase's generation never ran"))
            await asyncio.sleep(0.02)
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                i, name = self._schedule(1)[0]
                await asyncio.sleep(random.Random(f"{self.seed}:{i}:think").random() * self.think)
                await self._run_one(i, name, self.drain_outcomes)

        workers = [asyncio.create_task(traffic()) for _ in range(self.concurrency)]
        self.gk.signal(signal.SIGTERM)
        seen: list[int] = []
        refused: Counter[int] = Counter()
        while self.gk.proc.poll() is None:
            try:
                st = await self.status()
                seen.append(int(st["in_flight"]))
                refused[
                    await _exchange(self.target, _head("POST", "/generate", len(body)) + body)
                ] += 1
            except (aiohttp.ClientError, OSError):
                break  # the listeners closed: the process is exiting
            await asyncio.sleep(0.02)
        stop.set()  # the listeners are closed: more exchanges would only be refused
        await asyncio.gather(*workers)
        delivered = await song
        code = await asyncio.to_thread(self.gk.wait, 15)
        problems = []
        if any(n > self.max_in_flight or n < 0 for n in seen):
            problems.append(
                f"in_flight while draining went outside [0, {self.max_in_flight}]: {seen}"
            )
        if delivered != 200:
            problems.append(f"the generation running at SIGTERM got {delivered}")
        if set(refused) - {503, 0}:
            problems.append(f"admits while draining were answered {dict(refused)}")
        if code != 0:
            problems.append(f"gatekeeper exited {code} after a drain")
        if "Traceback" in self.gk.output():
            problems.append("gatekeeper logged a traceback")
        stuck = sum(c["STUCK"] for c in self.drain_outcomes.values())
        if stuck:
            problems.append(f"{stuck} exchange(s) took longer than {EXCHANGE_TIMEOUT}s")
        result = {
            "exit": code,
            "delivered": delivered,
            "in_flight_seen": sorted(set(seen)),
            "refused": dict(refused),
            "problems": problems,
        }
        self.note(f"phase sigterm end: {result}")
        if problems:
            raise InvariantViolation(self._report("; ".join(problems)))
        return result

    # ---------------------------------------------------------------- reporting

    def _report(self, what: str) -> str:
        tail = "\n".join(self.log[-60:])
        return (
            f"chaos invariant violated (seed {self.seed}, replay with GATEKEEPER_CHAOS_SEED="
            f"{self.seed}): {what}\nphase log:\n{tail}\ngatekeeper log: {self.gk.log_path}"
        )

    def summary(self) -> str:
        """Counts per action and outcome, per fault, and the invariant results."""
        actions: dict[str, Counter[str]] = {}
        faults: Counter[str] = Counter()
        for r in self.results:
            faults.update(r.faults)
            for name, c in r.outcomes.items():
                actions.setdefault(name, Counter()).update(c)
        for name, c in self.drain_outcomes.items():
            actions.setdefault(name, Counter()).update(c)
        total = sum(sum(c.values()) for c in actions.values())
        engines = f", {len(self.engine_names)} engines" if self.listed else ""
        lines = [
            f"chaos seed {self.seed}{engines}: {total} exchanges in {len(self.results)} phases"
            " and the SIGTERM drain"
        ]
        for name in sorted(actions):
            c = actions[name]
            detail = " ".join(f"{k}={v}" for k, v in sorted(c.items()))
            slowest = self.slowest.get(name, 0.0)
            lines.append(f"  {name:<20} {sum(c.values()):>5}  max {slowest:4.1f}s  {detail}")
        lines.append(
            "  faults: "
            + " ".join(f"{k}={v}" for k, v in sorted(faults.items()))
            + f" mode_switch_reloads={self.reloads - faults['sighup'] - faults['post_reload']}"
        )
        for r in self.results:
            verdict = "ok" if not r.violations else "; ".join(r.violations)
            peaks = (
                "engine peaks " + " ".join(f"{n}={p}" for n, p in r.engine_peaks.items())
                if self.listed
                else f"engine peak {r.engine_peak_active}"
            )
            lines.append(
                f"  phase {r.index} {r.mode:<6} limit {r.limit} {r.exchanges:>4} exchanges "
                f"{r.seconds:5.1f}s {peaks}: invariants {verdict}"
            )
        return "\n".join(lines)
