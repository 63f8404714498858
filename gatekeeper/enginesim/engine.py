"""The simulated engine: generations run under processor sharing, with real load.

Every generation needs ``seconds`` of work at full speed, and the running generations
share the engine equally, so two at once take about twice as long each. Unless
``burn_cpu`` is off, each generation runs a worker process that spins a CPU core and
holds ``memory_mb`` of touched memory until it finishes; otherwise the memory is held in
the server instead. No HTTP here: the handlers in ``api`` adapt requests to this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from gatekeeper.enginesim.config import SimConfig
from gatekeeper.enginesim.content import synthesize_wav

_PAGE = 4096
_EPSILON = 1e-6  # work left below this counts as finished; timers may fire a hair early

State = Literal["running", "done", "failed"]

# The worker is a separate interpreter so the busy loop can never stall the event loop,
# and so its memory is really resident (every page written) like a loaded model. It polls
# its parent pid so that it dies with a server killed by SIGKILL instead of spinning on.
# SIGINT is ignored because Ctrl+C reaches the whole process group; the server kills it.
_WORKER_CODE = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent = int(sys.argv[2])
ballast = bytearray(int(sys.argv[1]) << 20)
ballast[::4096] = b"\\x01" * len(range(0, len(ballast), 4096))
x = 1
while os.getppid() == parent:
    for _ in range(100_000):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
"""


@dataclass(eq=False)
class Generation:
    """One song: its request, its progress (``work_done`` of ``expected_seconds``), its end."""

    id: str
    lyrics: str
    description: str
    expected_seconds: float
    started_at: float = field(default_factory=time.monotonic)
    state: State = "running"
    work_done: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    wav: bytes | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.subprocess.Process | None = None
    ballast: bytearray | None = None
    releasing: bool = False


class EngineClosed(Exception):
    """Raised by :meth:`Engine.start` once the engine is shutting down."""


class Engine:
    """Runs generations under processor sharing: each of N active ones progresses at 1/N.

    Work is accounted lazily: :meth:`_advance` credits the time elapsed since the last
    accounting to every active generation, and is called before the active set changes
    and before any progress is read. One runner task sleeps until the next generation
    would finish, and is woken early when a generation starts or fails.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.generations: dict[str, Generation] = {}  # insertion order is age
        self._active: dict[str, Generation] = {}
        self._clock = time.monotonic()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._closed = asyncio.Event()
        self.completed = 0
        self.failed = 0
        self.peak_active = 0

    @property
    def active_count(self) -> int:
        return len(self._active)

    def reset_counters(self) -> None:
        self.completed = 0
        self.failed = 0
        self.peak_active = len(self._active)

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self._clock = now - self._clock, now
        if self._active:
            share = elapsed / len(self._active)
            for gen in self._active.values():
                gen.work_done += share

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def start(self, lyrics: str, description: str, seconds: float) -> Generation:
        if self.closing:
            raise EngineClosed
        gen = Generation(uuid.uuid4().hex, lyrics, description, seconds)
        self.generations[gen.id] = gen
        try:
            if self.config.burn_cpu:
                gen.worker = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-c",
                    _WORKER_CODE,
                    str(self.config.memory_mb),
                    str(os.getpid()),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                )
            elif self.config.memory_mb:
                gen.ballast = _touched_ballast(self.config.memory_mb)
        except (OSError, MemoryError) as exc:
            self._settle(gen, "failed", f"could not start the generation: {exc}")
            return gen
        if self.closing:  # shut down while the worker was being spawned
            await self._release(gen)
            self._settle(gen, "failed", "engine shutting down")
            return gen
        self._advance()
        gen.started_at = time.monotonic()
        self._active[gen.id] = gen
        self.peak_active = max(self.peak_active, len(self._active))
        if gen.worker is not None:
            self._spawn(self._watch(gen, gen.worker))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        else:
            self._wake.set()
        return gen

    async def _run(self) -> None:
        try:
            while self._active:
                self._advance()
                for gen in list(self._active.values()):
                    if gen.work_done >= gen.expected_seconds - _EPSILON:
                        del self._active[gen.id]
                        self._spawn(self._finish(gen))
                if not self._active:
                    break
                left = min(g.expected_seconds - g.work_done for g in self._active.values())
                self._wake.clear()
                try:
                    async with asyncio.timeout(left * len(self._active)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._runner = None

    async def _finish(self, gen: Generation) -> None:
        # The worker is reaped before the answer goes out, so a client that got its song
        # never sees a leftover process.
        await self._release(gen)
        if gen.state == "running":
            gen.wav = synthesize_wav(gen.lyrics)
            self._settle(gen, "done")

    async def _watch(self, gen: Generation, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not gen.releasing:  # died on its own, e.g. OOM-killed: the song is lost
            self._fail(gen, f"worker process exited unexpectedly with code {code}")

    async def _release(self, gen: Generation) -> None:
        gen.releasing = True
        gen.ballast = None
        proc = gen.worker
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited since the check
                proc.kill()
        await proc.wait()
        gen.worker = None

    def _fail(self, gen: Generation, error: str) -> None:
        if gen.state != "running":
            return
        self._advance()
        if self._active.pop(gen.id, None) is not None:
            self._wake.set()  # the others now get a bigger share
        self._settle(gen, "failed", error)
        self._spawn(self._release(gen))

    def _settle(self, gen: Generation, state: State, error: str | None = None) -> None:
        gen.state = state
        gen.error = error
        gen.finished_at = time.monotonic()
        if state == "done":
            self.completed += 1
        else:
            self.failed += 1
        gen.done.set()
        finished = [g for g in self.generations.values() if g.state != "running"]
        for old in finished[: max(0, len(finished) - self.config.max_history)]:
            del self.generations[old.id]

    def snapshot(self, gen: Generation) -> dict[str, Any]:
        self._advance()
        end = gen.finished_at if gen.finished_at is not None else time.monotonic()
        left = max(0.0, gen.expected_seconds - gen.work_done)
        if gen.state == "done":
            progress = 1.0
        elif gen.expected_seconds > 0:
            progress = min(1.0, gen.work_done / gen.expected_seconds)
        else:
            progress = 0.0
        info: dict[str, Any] = {
            "id": gen.id,
            "state": gen.state,
            "progress": round(progress, 4),
            "elapsed_seconds": round(end - gen.started_at, 3),
            "expected_seconds": gen.expected_seconds,
            "eta_seconds": round(left * max(1, len(self._active)), 3)
            if gen.state == "running"
            else 0.0,
            "description": gen.description,
        }
        if gen.state == "done":
            info["result_url"] = f"/result/{gen.id}"
        if gen.error is not None:
            info["error"] = gen.error
        return info

    def finish_running(self) -> int:
        """Count the work of every running generation as done, so each finishes now (its
        song and answer as usual); how many. A test holds songs for as long as its steps
        take, however loaded the machine, then ends them instead of sleeping."""
        self._advance()
        for gen in self._active.values():
            gen.work_done = gen.expected_seconds
        if self._active:
            self._wake.set()
        return len(self._active)

    async def nap(self, seconds: float) -> bool:
        """Sleep like ``asyncio.sleep``, but return False early if the engine shuts down."""
        # Test streams that stall for minutes end at shutdown instead of holding it up.
        try:
            async with asyncio.timeout(seconds):
                await self._closed.wait()
        except TimeoutError:
            return True
        return False

    async def shutdown(self) -> None:
        self.closing = True
        self._closed.set()
        for gen in list(self._active.values()):
            self._fail(gen, "engine shutting down")
        pending = list(self._tasks)
        if self._runner is not None:
            self._runner.cancel()
            pending.append(self._runner)
        await asyncio.gather(*pending, return_exceptions=True)


def _touched_ballast(memory_mb: int) -> bytearray:
    buf = bytearray(memory_mb << 20)
    # A fresh bytearray is lazily mapped zero pages; writing one byte per page makes the
    # memory resident, which is what the proxy's memory guard has to see.
    buf[::_PAGE] = b"\x01" * len(range(0, len(buf), _PAGE))
    return buf
