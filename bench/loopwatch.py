"""``gatekeeper`` with the event loop's slow-callback detection on (bench section f).

    python bench/loopwatch.py REPORT.json run --config ... --loop asyncio

asyncio's debug mode times every callback in ``BaseEventLoop._run_once`` (around
``Handle._run``) and logs those that took ``loop.slow_callback_duration`` or
more. This does the same timing without the rest of debug mode (a traceback
captured for every handle, which would slow every callback it measures): it
wraps ``asyncio.events.Handle._run`` and keeps every callback of 1 ms or more:
its end on the monotonic clock (which other processes on the box share), its
wall time, the thread's CPU time in it, what it ran, ``[preempted]`` when the
kernel gave the loop thread's CPU to another process meanwhile (an involuntary
context switch: on a busy box the wall time is then not all gatekeeper's) and
``[blocked]`` when the thread waited in the kernel (a voluntary switch: a disk
write, a fault). A garbage collection of 1 ms or more is recorded too (inside the
callback it interrupted). REPORT.json is rewritten twice a second. Needs the
stdlib loop (``--loop asyncio``): uvloop does not run callbacks through ``Handle``.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import threading
import time
from asyncio import events
from pathlib import Path
from typing import Any

KEEP_SECONDS = 0.001  # callbacks this long or longer are recorded
RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def install(report: Path) -> None:
    slow: list[tuple[float, float, float, str]] = []
    lock = threading.Lock()
    run = events.Handle._run

    def timed(self: Any) -> None:
        t0, c0, s0 = time.perf_counter(), time.thread_time(), _switches()
        try:
            run(self)
        finally:
            spent = time.perf_counter() - t0
            if spent >= KEEP_SECONDS:
                cpu = time.thread_time() - c0
                s1 = _switches()
                what = _what(self) + (" [preempted]" if s1[1] > s0[1] else "")
                what += " [blocked]" if s1[0] > s0[0] else ""
                with lock:
                    slow.append((time.monotonic(), spent, cpu, what))

    events.Handle._run = timed  # type: ignore[method-assign]
    gc_started = [0.0, 0.0]

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[:] = [time.perf_counter(), time.thread_time()]
            return
        spent = time.perf_counter() - gc_started[0]
        if spent >= KEEP_SECONDS:
            cpu = time.thread_time() - gc_started[1]
            with lock:
                slow.append((time.monotonic(), spent, cpu, f"gc generation {info['generation']}"))

    gc.callbacks.append(collected)

    def writer() -> None:
        while True:
            time.sleep(0.5)
            with lock:
                data = json.dumps(slow)
            tmp = report.with_suffix(".tmp")
            tmp.write_text(data)
            tmp.replace(report)

    threading.Thread(target=writer, name="loopwatch", daemon=True).start()


def _switches() -> tuple[int, int]:
    """This thread's (voluntary, involuntary) context switches so far: it waited in the
    kernel (a disk write, a page fault), the kernel gave its CPU to another process."""
    usage = resource.getrusage(RUSAGE_THREAD)
    return usage.ru_nvcsw, usage.ru_nivcsw


def _what(handle: Any) -> str:
    """What a handle ran: a task's coroutine, else the callback's repr."""
    task = getattr(handle._callback, "__self__", None)
    coro = getattr(task, "get_coro", None)
    if coro is not None:
        c = coro()
        frame = getattr(c, "cr_frame", None)
        where = f" at line {frame.f_lineno}" if frame is not None else ""
        return f"task {getattr(c, '__qualname__', c)!s}{where}"
    return repr(handle)[:160]


def stalls(report: Path, since: float, until: float) -> list[tuple[float, float, float, str]]:
    """(end, wall seconds, CPU seconds, what) of each recorded callback that ended
    between ``since`` and ``until`` (monotonic)."""
    time.sleep(0.6)  # one more write
    rows = json.loads(report.read_text()) if report.exists() else []
    return [(t, d, c, w) for t, d, c, w in rows if since <= t <= until]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    install(Path(sys.argv[1]))
    from gatekeeper.cli.main import main

    sys.exit(main(sys.argv[2:]))
