"""The chaos driver on two boxes sharing one real PostgreSQL (issue #21).

``Boxes`` starts two ``gatekeeper run`` boxes with ``jobs.store: postgres`` (one schema,
``jobs.lease`` short, ``client_key: header:X-User``), each in front of its own engine-sim
(one slot), and sends seeded hostile exchanges spread over both public listeners: async
jobs submitted on one box and read on the other, held requests, cancels on the other
box, held clients that vanish mid-wait, the same song from both users on both boxes at
once (coalescing across boxes), each user's own list, while a fault task reloads either
box (SIGHUP or ``POST /reload``) or SIGKILLs either engine and restarts it. After each phase
the invariants are checked ACROSS the boxes, from the database and the engines:

- each engine's own peak (``/_sim/stats``, folded over its restarts) never exceeds its
  one slot, plus the generations gatekeeper abandoned on it (jobs cancelled running, as
  chaos.py tolerates in ``cancel`` mode);
- no job runs twice: the generations the engines received are at most the jobs that
  started (the database's ``run_box``), and every job is final at the end of the phase;
- nothing is lost: every handle a client was given is in the database, its job final,
  and both boxes answer ``GET`` for it with the same state;
- no identity crossing: no answer to one user carries an id the other was given
  (``chaos_identity``'s ``_claim``), and a user's own list never shows the other's jobs;
- every gatekeeper refusal is JSON with ``detail`` and ``reason``, never a bare 500;
- the SIGTERM drain at the end exits 0 on both boxes.
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
import asyncpg
import chaos_identity
from chaos import EngineLedger, InvariantViolation
from support import Proc, rules, start_engine, start_gatekeeper

JOBS = "/_gatekeeper/jobs"
USERS = ("alice", "bob")
FINAL_TIMEOUT = 30.0
EXCHANGE_TIMEOUT = 20.0
RUNNING = ("queued", "running")
RUN_WIDE = ("jobs_final", "handles_in_db")  # checks counted over the run, not a phase


def box_rules(schema: str, dsn_env: str) -> str:
    return rules(
        {
            "admission": {
                "max_in_flight": 1,
                "expected_seconds": 0.3,
                "sample_interval": 0.1,
                "queue": {"client_key": "header:X-User", "per_client": 50, "max_waiting": 200},
            },
            "upstream": {"probe": {"interval": 0.2}},
            "shutdown": {"drain_timeout": "10s", "linger": "0s"},
            "alerts": {"rules": []},
            "jobs": {
                "store": "postgres",
                "lease": 2.0,
                "postgres": {"dsn_env": dsn_env, "schema": schema},
            },
        }
    )


@dataclass
class Box:
    name: str
    where: Path
    proc: Proc
    url: str
    admin: str
    engine: Proc
    engine_url: str
    ledger: EngineLedger = field(default_factory=EngineLedger)

    @property
    def id(self) -> str:
        return (self.where / "state" / "box-id").read_text().strip()


@dataclass
class BoxesResult:
    index: int
    exchanges: int
    seconds: float
    outcomes: dict[str, Counter[str]]
    faults: Counter[str]
    checks: dict[str, int]  # invariant -> what it counted (jobs, handles...)


def _song(rng: random.Random, n: int | None = None) -> dict[str, Any]:
    """A fresh song, or song ``n`` of a small pool (identical requests meet: coalescing)."""
    return {"lyrics": f"song {rng.randrange(10**9) if n is None else n}", "seconds": 0.3}


class Boxes:
    """Two boxes, one schema; use as ``async with Boxes(...) as b``."""

    def __init__(
        self, tmp: Path, seed: int, dsn: str, schema: str, *, concurrency: int = 4
    ) -> None:
        self.tmp, self.seed, self.dsn, self.schema = tmp, seed, dsn, schema
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.log: list[str] = []
        self.handles: dict[str, str] = {}  # handle id -> user it was given to
        self.problems: list[str] = []  # refusals that were not gatekeeper's JSON
        self.results: list[BoxesResult] = []
        self.next_exchange = 0
        self.drain: dict[str, int | None] = {}
        self.started_before = 0

    async def __aenter__(self) -> Boxes:
        import os

        os.environ["GK_CHAOS_DSN"] = self.dsn
        text = box_rules(self.schema, "GK_CHAOS_DSN")
        self.boxes: list[Box] = []
        try:
            for name in ("a", "b"):
                where = self.tmp / name
                where.mkdir()
                engine, engine_url = start_engine(where, seconds=0.3)
                self.boxes.append(Box(name, where, engine, "", "", engine, engine_url))
                proc, url, admin = start_gatekeeper(
                    where, text, engine_url, "--state-dir", str(where / "state")
                )
                self.boxes[-1].proc, self.boxes[-1].url, self.boxes[-1].admin = proc, url, admin
        except BaseException:
            self._stop()
            raise
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=EXCHANGE_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        self._stop()

    def _stop(self) -> None:
        for box in self.boxes:
            box.proc.stop()
            box.engine.stop()

    def note(self, line: str) -> None:
        self.log.append(f"{time.monotonic():.3f} {line}")

    def pick(self, rng: random.Random) -> tuple[Box, Box]:
        """A box to submit to and the other one."""
        first = rng.randrange(2)
        return self.boxes[first], self.boxes[1 - first]

    # ---------------------------------------------------------------- answers

    async def answer(self, r: aiohttp.ClientResponse, who: str) -> str:
        """Check one gatekeeper answer (identity, refusal shape); its text."""
        text = (await r.read()).decode("latin-1")  # a result is a WAV
        chaos_identity._claim(
            who, r.headers.get("X-Gatekeeper-Job"), text, json.dumps(dict(r.headers))
        )
        if r.status == 500 or (r.status >= 400 and "X-Gatekeeper-Reason" in r.headers):
            try:
                doc = json.loads(text)
                ok = r.status != 500 and "detail" in doc and "reason" in doc
            except ValueError:
                ok = False
            if not ok:
                self.problems.append(f"{r.method} {r.url.path} {r.status}: {text[:200]}")
        return text

    async def submit(self, box: Box, who: str, song: dict[str, Any]) -> str | None:
        headers = {"X-User": who, "Prefer": "respond-async"}
        async with self.http.post(box.url + "/generate", json=song, headers=headers) as r:
            text = await self.answer(r, who)
            if r.status != 202:
                return None
        handle = str(json.loads(text)["id"])
        self.handles[handle] = who
        return handle

    async def wait_final(self, box: Box, who: str, handle: str) -> str:
        for _ in range(int(EXCHANGE_TIMEOUT / 0.1) - 20):
            async with self.http.get(f"{box.url}{JOBS}/{handle}", headers={"X-User": who}) as r:
                text = await self.answer(r, who)
                if r.status != 200:
                    return f"get:{r.status}"
                state = str(json.loads(text)["state"])
            if state not in RUNNING:
                return state
            await asyncio.sleep(0.1)
        return "slow"

    # ---------------------------------------------------------------- faults

    async def kill_engine(self) -> None:
        box = self.rng.choice(self.boxes)
        stats = await self.engine_stats(box)
        if stats is not None:
            box.ledger.fold(stats)
        box.engine.kill()
        self.note(f"fault: engine of box {box.name} killed")
        await asyncio.sleep(self.rng.uniform(0.0, 0.5))
        box.ledger.restarts += 1
        port = box.engine_url.rsplit(":", 1)[1]
        box.engine = await asyncio.to_thread(_restart_engine, box.where, port)

    async def engine_stats(self, box: Box) -> dict[str, Any] | None:
        try:
            async with self.http.get(box.engine_url + "/_sim/stats") as r:
                return dict(await r.json())
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _faults(self, faults: Counter[str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.uniform(1.0, 3.0)):
                    await stop.wait()
            if stop.is_set():
                return
            if self.rng.random() < 0.5:
                faults["kill_engine"] += 1
                await self.kill_engine()
            elif self.rng.random() < 0.5:
                box = self.rng.choice(self.boxes)
                faults["sighup"] += 1
                box.proc.signal(signal.SIGHUP)
                self.note(f"fault: box {box.name} reloaded by SIGHUP")
            else:
                box = self.rng.choice(self.boxes)
                faults["post_reload"] += 1
                async with self.http.post(box.admin + "/reload") as r:
                    if r.status != 200:
                        self.problems.append(f"POST /reload on box {box.name}: {r.status}")
                self.note(f"fault: box {box.name} reloaded by POST /reload")

    # ---------------------------------------------------------------- phases

    async def phase(self, exchanges: int) -> BoxesResult:
        from chaos_boxes_actions import ACTIONS

        index = len(self.results)
        for box in self.boxes:
            box.ledger = EngineLedger(restarts=box.ledger.restarts)
            async with self.http.post(box.engine_url + "/_sim/reset") as r:
                assert r.status == 200
        before, _ = await self._rows()
        self.started_before = sum(1 for j in before if j["started"] is not None)
        names = list(ACTIONS)
        weights = [ACTIONS[k][1] for k in names]
        queue = []
        for _ in range(exchanges):
            i, self.next_exchange = self.next_exchange, self.next_exchange + 1
            queue.append((i, random.Random(f"{self.seed}:{i}").choices(names, weights)[0]))
        outcomes: dict[str, Counter[str]] = {}
        faults: Counter[str] = Counter()
        stop = asyncio.Event()
        fault_task = asyncio.create_task(self._faults(faults, stop))
        t0 = time.monotonic()

        async def worker() -> None:
            while queue:
                i, name = queue.pop(0)
                rng = random.Random(f"{self.seed}:{i}:params")
                await asyncio.sleep(rng.expovariate(10))
                try:
                    async with asyncio.timeout(EXCHANGE_TIMEOUT + 5):
                        outcome = await ACTIONS[name][0](self, rng)
                except chaos_identity.Crossed as exc:
                    self.note(f"exchange {i} {name}: {exc}")
                    outcome = chaos_identity.CROSSED
                except TimeoutError:
                    outcome = "STUCK"
                except (ConnectionError, aiohttp.ClientError, asyncio.IncompleteReadError):
                    outcome = "conn_error"
                outcomes.setdefault(name, Counter())[outcome] += 1

        try:
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            stop.set()
            await fault_task
        seconds = time.monotonic() - t0
        violations, checks = await self.check(outcomes)
        result = BoxesResult(index, exchanges, seconds, outcomes, faults, checks)
        self.results.append(result)
        self.note(f"phase {index} end: faults {dict(faults)} checks {checks} {violations}")
        if violations:
            raise InvariantViolation(self._report("; ".join(violations)))
        return result

    async def _rows(self) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        con = await asyncpg.connect(self.dsn)
        try:
            jobs = await con.fetch(f"SELECT id, state, run_box, started FROM {self.schema}.jobs")
            handles = await con.fetch(
                f"SELECT id, job_id, client, detached, held FROM {self.schema}.handles"
            )
            return list(jobs), list(handles)
        finally:
            await con.close()

    async def check(self, outcomes: dict[str, Counter[str]]) -> tuple[list[str], dict[str, int]]:
        """The cross-box invariants at the end of a phase (``chaos_boxes_check``)."""
        from chaos_boxes_check import check

        return await check(self, outcomes)

    async def sigterm(self) -> dict[str, int | None]:
        """SIGTERM both boxes with a job running on each: both must exit 0."""
        for box in self.boxes:
            await self.submit(box, "alice", {"lyrics": f"drain {box.name}", "seconds": 0.5})
        for box in self.boxes:
            box.proc.signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(box.proc.wait, 20) for box in self.boxes]
        self.drain = {box.name: code for box, code in zip(self.boxes, codes, strict=True)}
        if any(code != 0 for code in codes):
            raise InvariantViolation(self._report(f"drain exit codes {self.drain}"))
        return self.drain

    def _report(self, what: str) -> str:
        tail = "\n".join(self.log[-40:])
        return f"two-box chaos invariant violated (seed {self.seed}): {what}\n{tail}"

    def summary(self) -> str:
        actions: dict[str, Counter[str]] = {}
        faults: Counter[str] = Counter()
        checks: Counter[str] = Counter()
        for r in self.results:
            faults.update(r.faults)
            checks.update({k: v for k, v in r.checks.items() if k not in RUN_WIDE})
            for name, c in r.outcomes.items():
                actions.setdefault(name, Counter()).update(c)
        total = sum(sum(c.values()) for c in actions.values())
        lines = [f"two-box chaos seed {self.seed}: {total} exchanges in {len(self.results)} phases"]
        for name in sorted(actions):
            detail = " ".join(f"{k}={v}" for k, v in sorted(actions[name].items()))
            lines.append(f"  {name:<16} {sum(actions[name].values()):>5}  {detail}")
        lines.append("  faults: " + " ".join(f"{k}={v}" for k, v in sorted(faults.items())))
        if self.results:  # these two count the whole run's rows: the last phase's
            checks.update({k: self.results[-1].checks[k] for k in RUN_WIDE})
        summed = " ".join(f"{k}={v}" for k, v in sorted(checks.items()) if "peak" not in k)
        lines.append(f"  checked: {summed}")
        for r in self.results:
            peaks = " ".join(f"{k}={v}" for k, v in r.checks.items() if k.startswith("peak"))
            lines.append(
                f"  phase {r.index} {r.exchanges} exchanges {r.seconds:5.1f}s engine {peaks}"
            )
        lines.append(f"  drain exit codes: {self.drain}")
        return "\n".join(lines)


def _restart_engine(where: Path, port: str) -> Proc:
    args = ["engine-sim", "--listen", f"127.0.0.1:{port}", "--seconds", "0.3", "--no-cpu"]
    log = where / f"engine-{port}-{time.monotonic_ns()}.log"
    return Proc([*args, "--memory-mb", "1"], log, ready=r"listening on http://")


Action = Callable[[Boxes, random.Random], Awaitable[str]]
