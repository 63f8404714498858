"""Load generators (``wrk``, ``hey``), their output parsed, and the CPU spent meanwhile.

:func:`measure` runs one command ``n`` times and returns a :class:`Run` per run: the
tool's figures plus the proxy's CPU and the CPU taken by anything that is not this
bench (see :class:`Meter`). :func:`median_run` and :func:`spread` summarise the runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.procs import Service, Services, cmdline


@dataclass(frozen=True)
class Load:
    """One load run's figures (latencies in seconds)."""

    requests_per_second: float
    p50: float
    p99: float
    requests: int
    errors: int  # non-2xx/3xx + socket errors (wrk) or transport errors (hey)
    statuses: dict[str, int]  # by status code (hey); {"non-2xx/3xx": n} (wrk)


_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _wrk_duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> Load:
    """wrk's summary; p50/p99 need ``--latency`` (0.0 without it)."""

    def grab(pattern: str) -> str:
        m = re.search(pattern, out, re.MULTILINE)
        if not m:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
        return m.group(1)

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    return Load(
        requests_per_second=float(grab(r"^Requests/sec:\s+([\d.]+)")),
        p50=_wrk_duration(p50.group(1)) if p50 else 0.0,
        p99=_wrk_duration(p99.group(1)) if p99 else 0.0,
        requests=int(grab(r"^\s+(\d+) requests in")),
        errors=errors,
        statuses={"non-2xx/3xx": int(non2xx.group(1))} if non2xx else {},
    )


def parse_hey(out: str) -> Load:
    def grab(pattern: str) -> str:
        m = re.search(pattern, out, re.MULTILINE)
        if not m:
            raise ValueError(f"hey output lacks {pattern!r}:\n{out}")
        return m.group(1)

    statuses = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\s+\[(\d+)\]\s+(\d+) responses", out, re.M)
    }
    err = out.split("Error distribution:", 1)
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", err[1], re.M)) if len(err) > 1 else 0
    return Load(
        requests_per_second=float(grab(r"Requests/sec:\s+([\d.]+)")),
        p50=float(grab(r"50%+ in ([\d.]+) secs")),
        p99=float(grab(r"99%+ in ([\d.]+) secs")),
        requests=sum(statuses.values()),
        errors=errors,
        statuses=statuses,
    )


def wrk_post_script(path: Path, body: str) -> Path:
    """A wrk Lua script that turns every request into ``POST`` with a JSON ``body``."""
    lua_body = body.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        f'wrk.method = "POST"\nwrk.body = "{lua_body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


async def run_tool(
    argv: list[str], *, show: bool = True, until: asyncio.Event | None = None
) -> str:
    """Run a load generator to completion, or until ``until`` is set (then SIGINT: wrk
    and hey both print their summary on it); kill it if the bench is interrupted."""
    if show:
        print(f"  $ {cmdline(argv)}", flush=True)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    stopper: asyncio.Task[None] | None = None
    if until is not None:

        async def interrupt() -> None:
            await until.wait()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)

        stopper = asyncio.create_task(interrupt())
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        if stopper is not None:
            stopper.cancel()
    text = out.decode(errors="replace")
    if proc.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}:\n{text}")
    return text


def process_cpu(pids: Sequence[int]) -> float:
    """CPU seconds used so far by these processes and their children (nginx workers)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def reaped_children_cpu() -> float:
    """CPU seconds of this process's children that have exited (the load generators)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def _machine_busy() -> float:
    """CPU seconds the whole machine spent in user and system mode so far."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system)


class Meter:
    """CPU over one load run: the proxy's, and everything that is not the bench's.

    "Other" is the machine's busy time minus this script, its reaped children (the load
    generator) and the services it started: on a shared 2-core box it says how much of
    the machine something else took while the figures were being taken.
    """

    def __init__(self, proxy_pid: int | None, service_pids: Sequence[int]) -> None:
        self._proxy = [proxy_pid] if proxy_pid else []
        self._pids = list(service_pids)
        self._start = time.monotonic()
        self._machine = _machine_busy()
        self._mine = self._own_cpu()
        self._proxy_cpu = process_cpu(self._proxy)

    def _own_cpu(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        reaped = me.ru_utime + me.ru_stime + reaped_children_cpu()
        return reaped + process_cpu(self._pids)

    def stop(self) -> tuple[float, float]:
        """(proxy CPU in % of one core, other processes' CPU in cores) since start."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        proxy = process_cpu(self._proxy) - self._proxy_cpu
        other = (_machine_busy() - self._machine) - (self._own_cpu() - self._mine)
        return 100.0 * proxy / elapsed, max(other, 0.0) / elapsed


@dataclass(frozen=True)
class Run:
    load: Load
    proxy_cpu: float  # % of one core
    other_cores: float


async def measure(
    argv: list[str], parse: Callable[[str], Load], svcs: Services, proxy: Service | None, n: int
) -> list[Run]:
    """Run a load generator ``n`` times; the figures of each run, in order."""
    runs = []
    for i in range(n):
        meter = Meter(proxy.pid if proxy else None, [s.pid for s in svcs.running()])
        load = parse(await run_tool(argv, show=i == 0))
        runs.append(Run(load, *meter.stop()))
    return runs


def median_run(runs: Sequence[Run]) -> Run:
    """The run with the median throughput: its latencies are reported as they came."""
    ordered = sorted(runs, key=lambda r: r.load.requests_per_second)
    return ordered[(len(ordered) - 1) // 2]


def spread(runs: Sequence[Run]) -> str:
    rates = [r.load.requests_per_second for r in runs]
    return f"{min(rates):,.0f}-{max(rates):,.0f}" if len(rates) > 1 else "-"
