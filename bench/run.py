"""gatekeeper benchmarks: figures, not adjectives (issue #2: "speed is measured").

Run with the project's virtualenv from the repository root::

    .venv/bin/python bench/run.py            # full run, about 2 minutes
    .venv/bin/python bench/run.py --quick    # smoke run, ~2 s per load phase
    .venv/bin/python bench/run.py --sections a,c

Everything is started here, on 127.0.0.1 and free ports, and stopped again on success,
failure and Ctrl-C: a local nginx (upstream for the passthrough figures), the bundled
``gatekeeper engine-sim`` and ``gatekeeper run`` as subprocesses. Load comes from ``wrk``
and ``hey`` (Debian packages ``wrk`` and ``hey``) and from aiohttp in this process.

Sections (each prints its figures and the exact command lines used):

a. passthrough throughput and latency: nginx serving a small static file, measured
   directly and through gatekeeper (``--log-level WARNING``, then with the default INFO
   access log), with ``wrk -t1 -c1`` and ``wrk -t2 -c32``.
b. rejection fast path: one long generation holds the only slot; ``hey`` hammers
   ``POST /generate`` and gets 503s. The engine must have seen exactly one generation.
c. exact admission: 500 simultaneous ``POST /generate`` (aiohttp, no connection limit)
   with ``max_in_flight: 1``: exactly one forwarded, and how fast the 499 others hear no.
d. memory: gatekeeper's RSS before, during (peak) and after a 1 GiB streamed download.

Exit status: 0 when every check held, 1 when a check failed, 2 when a required binary
is missing (the message says what to ``apt-get install``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GENERATE_BODY = '{"lyrics":"x","description":"y"}'
SMALL_FILE_BYTES = 512
MiB = 1 << 20
GiB = 1 << 30

# Which binaries each section needs, and where Debian ships them.
NEEDS: dict[str, tuple[str, ...]] = {"a": ("nginx", "wrk"), "b": ("hey",), "c": (), "d": ()}
APT_PACKAGE = {"nginx": "nginx", "wrk": "wrk", "hey": "hey"}


@dataclass(frozen=True)
class Plan:
    """How long and how big: the full run, or ``--quick`` for a smoke run."""

    load_seconds: float
    warmup_seconds: float
    repeat: int  # load runs per figure (the median is reported)
    burst: int
    download_bytes: int


FULL = Plan(load_seconds=5.0, warmup_seconds=1.0, repeat=3, burst=500, download_bytes=GiB)
QUICK = Plan(load_seconds=2.0, warmup_seconds=1.0, repeat=1, burst=500, download_bytes=256 * MiB)


class CheckFailed(Exception):
    """A figure the bench asserts (not a test: it only makes the exit status 1)."""


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmdline(argv: Sequence[str]) -> str:
    """The command line as a person would type it (venv python shown as is)."""
    return shlex.join(argv)


class Service:
    """A background process: started in its own session, output to a log file.

    ``stop`` is idempotent; the registry in :class:`Services` calls it again on the way
    out, so a failure or Ctrl-C anywhere still stops every process started here.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops us in order
        )
        print(f"  $ {cmdline(argv)}", flush=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.output()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start ({pattern!r}):\n{self.output()[-3000:]}")

    def wait_for_http(self, url: str, timeout: float = 20.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {url}:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


@dataclass
class Services:
    """Every process this run started, so that all of them are stopped on any exit."""

    workdir: Path
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> Service:
        svc = Service(name, argv, self.workdir / f"{name}-{len(self.started)}.log")
        self.started.append(svc)
        return svc

    def running(self) -> list[Service]:
        return [s for s in self.started if s.proc.poll() is None]

    def stop_all(self) -> None:
        for svc in reversed(self.started):
            svc.stop()

    @contextlib.contextmanager
    def scope(self) -> Iterator[Services]:
        """Stop whatever a section started when the section ends (in reverse order)."""
        mark = len(self.started)
        try:
            yield self
        finally:
            for svc in reversed(self.started[mark:]):
                svc.stop()

    def nginx(self, root: Path) -> str:
        """nginx, one worker, serving ``small.json``; returns its URL."""
        port = free_port()
        (root / "www").mkdir(parents=True)
        (root / "www" / "small.json").write_bytes(
            (b'{"status":"ok","pad":"' + b"x" * SMALL_FILE_BYTES)[: SMALL_FILE_BYTES - 2] + b'"}'
        )
        temp_paths = "\n".join(
            f"    {kind}_temp_path {root}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (root / "nginx.conf").write_text(
            f"""worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log combined buffer=64k flush=1s;
{temp_paths}
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        default_type application/json;
    }}
}}
"""
        )
        # Workers run as an unprivileged user when the bench runs as root.
        for p in (self.workdir, root, root / "www"):
            p.chmod(0o755)
        # -e: the startup error log too, so nothing is written under /var/log.
        argv = ["nginx", "-p", f"{root}/", "-c", f"{root}/nginx.conf", "-e", f"{root}/error.log"]
        svc = self.start("nginx", [*argv, "-g", "daemon off;"])
        url = f"http://127.0.0.1:{port}/small.json"
        svc.wait_for_http(url)
        return url

    def engine(self, *extra: str) -> str:
        port = free_port()
        argv = [PYTHON, "-m", "gatekeeper", "engine-sim", "--listen", f"127.0.0.1:{port}"]
        svc = self.start("engine-sim", [*argv, *extra])
        svc.wait_for_line(r"listening on http://")
        return f"http://127.0.0.1:{port}"

    def bare_proxy(self, upstream: str, probe_path: str) -> tuple[Service, str]:
        """bench/bare_proxy.py, the floor; returns (service, proxy URL)."""
        port = free_port()
        script = str(Path(__file__).with_name("bare_proxy.py"))
        argv = [PYTHON, script, "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
        svc = self.start("bare-proxy", argv)
        svc.wait_for_http(f"http://127.0.0.1:{port}{probe_path}")
        return svc, f"http://127.0.0.1:{port}"

    def gatekeeper(self, upstream: str, *, log_level: str = "WARNING") -> tuple[Service, str]:
        """``gatekeeper run`` with the bench's rules; returns (service, proxy URL)."""
        port, admin = free_port(), free_port()
        rules = self.workdir / "rules.yaml"
        if not rules.exists():
            readings = self.workdir / "readings.json"
            readings.write_text(json.dumps({"cpu_percent": 5, "memory_percent": 5}))
            rules.write_text(BENCH_RULES.format(readings=readings))
        argv = [PYTHON, "-m", "gatekeeper", "run", "--config", str(rules)]
        argv += ["--upstream", upstream, "--listen", f"127.0.0.1:{port}"]
        argv += ["--admin-listen", f"127.0.0.1:{admin}", "--log-level", log_level]
        svc = self.start("gatekeeper", argv)
        svc.wait_for_line(r"admin listening on http://")
        return svc, f"http://127.0.0.1:{port}"


# Only what differs from the packaged defaults. The readings file pins admission's
# CPU/memory view at 5 %: on 2 cores the load generator alone drives the real CPU over
# 90 %, and these figures are about the proxy, not about the hysteresis.
BENCH_RULES = """\
upstream:
  passthrough:
    limits:
      max_connections: 64
      max_keepalive_connections: 32
admission:
  max_in_flight: 1
  resources:
    source: file
    file: {readings}
shutdown:
  drain_timeout: 0s
  linger: 0s
"""


# ---------------------------------------------------------------- load generators


@dataclass(frozen=True)
class Load:
    """One load run's figures (latencies in seconds)."""

    requests_per_second: float
    p50: float
    p99: float
    requests: int
    errors: int  # non-2xx/3xx (wrk) or transport errors (hey)
    statuses: dict[str, int]


_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _wrk_duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> Load:
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
    return Load(
        requests_per_second=float(grab(r"^Requests/sec:\s+([\d.]+)")),
        p50=_wrk_duration(grab(r"^\s+50%\s+(\S+)")),
        p99=_wrk_duration(grab(r"^\s+99%\s+(\S+)")),
        requests=int(grab(r"^\s+(\d+) requests in")),
        errors=errors,
        statuses={},
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


async def run_tool(argv: list[str], *, show: bool = True) -> str:
    """Run a load generator to completion; kill it if the bench is interrupted."""
    if show:
        print(f"  $ {cmdline(argv)}", flush=True)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}:\n{text}")
    return text


def _process_cpu(pids: Sequence[int]) -> float:
    """CPU seconds used so far by these processes and their children (nginx workers)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
    return total


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
        self._proxy_cpu = _process_cpu(self._proxy)

    def _own_cpu(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        return reaped + _process_cpu(self._pids)

    def stop(self) -> tuple[float, float]:
        """(proxy CPU in % of one core, other processes' CPU in cores) since start."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        proxy = _process_cpu(self._proxy) - self._proxy_cpu
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


# ---------------------------------------------------------------- formatting


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join("  " + x for x in out)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def listen_overflows() -> int:
    """The kernel's count of connections dropped on a full accept queue (-1 if unknown)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table_ = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table_.get("ListenOverflows", -1))
    return -1


def heading(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


# ---------------------------------------------------------------- sections


async def section_a(svcs: Services, plan: Plan) -> None:
    """Passthrough: nginx directly, then through gatekeeper (WARNING, then INFO log)."""
    heading("a. passthrough throughput and latency (GET of a small static file)")
    d = f"{plan.load_seconds:g}s"
    with svcs.scope():
        path = "/small.json"
        nginx = svcs.nginx(svcs.workdir / "nginx")
        print(
            f"\n  static file: {SMALL_FILE_BYTES} bytes. Per row: an unreported "
            f"{plan.warmup_seconds:g}s warm-up, then {plan.repeat} run(s) of {d}; req/s, p50 "
            "and p99 are\n  those of the median run, range spans all runs, other CPU is the "
            "worst run's.\n"
        )
        rows: list[list[str]] = []
        # One proxy at a time, so an idle one does not share the 2 cores. The bare aiohttp
        # proxy (bench/bare_proxy.py) is the floor: same client and server library, nothing else.
        upstream = nginx.removesuffix(path)
        for target in ("direct", "bare", "WARNING", "INFO"):
            with svcs.scope():
                gk: Service | None = None
                url, label = nginx, "nginx direct"
                if target == "bare":
                    gk, proxy = svcs.bare_proxy(upstream, path)
                    url, label = proxy + path, "via bare aiohttp proxy"
                elif target != "direct":
                    gk, proxy = svcs.gatekeeper(upstream, log_level=target)
                    url, label = proxy + path, f"via gatekeeper, log {target}"
                for threads, conns in ((1, 1), (2, 32)):
                    flags = ["-t", str(threads), "-c", str(conns)]
                    warmup = ["wrk", *flags, "-d", f"{plan.warmup_seconds:g}s", url]
                    await run_tool(warmup, show=False)
                    argv = ["wrk", *flags, "-d", d, "--latency", url]
                    runs = await measure(argv, parse_wrk, svcs, gk, plan.repeat)
                    m = median_run(runs)
                    errors = sum(r.load.errors for r in runs)
                    rows.append(
                        [label, str(conns), f"{m.load.requests_per_second:,.0f}", spread(runs),
                         ms(m.load.p50), ms(m.load.p99), str(errors),
                         f"{m.proxy_cpu:.0f} %" if gk else "-",
                         f"{max(r.other_cores for r in runs):.2f}"]
                    )  # fmt: skip
                    if errors:
                        raise CheckFailed(f"{label} -c{conns}: {errors} errors")
        print()
        headers = ["target", "conns", "req/s", "range", "p50", "p99", "errors", "proxy CPU"]
        print(table([*headers, "other CPU (cores)"], rows))


async def section_b(svcs: Services, plan: Plan) -> None:
    """The reject path while one generation holds the slot; the engine sees one request."""
    heading("b. rejection fast path (POST /generate while one generation runs)")
    with svcs.scope():
        engine = svcs.engine("--no-cpu", "--seconds", "60", "--memory-mb", "16")
        gk, proxy = svcs.gatekeeper(engine)
        async with aiohttp.ClientSession() as session:
            long_gen = asyncio.create_task(_post_generate(session, proxy + "/generate"))
            try:
                await _wait_active(session, engine, 1)
                async with session.post(
                    proxy + "/generate", data=GENERATE_BODY, headers=_JSON
                ) as resp:
                    reason = resp.headers.get("X-Gatekeeper-Reason")
                    if resp.status != 503 or reason != "busy":
                        raise CheckFailed(f"expected 503 busy, got {resp.status} {reason}")
                    await resp.read()
                argv = ["hey", "-z", f"{plan.load_seconds:g}s", "-c", "32", "-m", "POST"]
                argv += ["-d", GENERATE_BODY, "-T", "application/json", proxy + "/generate"]
                print(f"\n  {plan.repeat} run(s); the median run is shown, range spans all\n")
                runs = await measure(argv, parse_hey, svcs, gk, plan.repeat)
                stats = await _sim_stats(session, engine)
            finally:
                long_gen.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await long_gen
    seen = stats["requests"].get("POST /generate", 0)
    m = median_run(runs)
    statuses: Counter[str] = Counter()
    for r in runs:
        statuses.update(r.load.statuses)
    errors = sum(r.load.errors for r in runs)
    print()
    print(table(
        ["conns", "req/s", "range", "p50", "p99", "proxy CPU", "other CPU (cores)",
         "status codes (all runs)", "transport errors", "engine POST /generate"],
        [["32", f"{m.load.requests_per_second:,.0f}", spread(runs), ms(m.load.p50),
          ms(m.load.p99), f"{m.proxy_cpu:.0f} %", f"{max(r.other_cores for r in runs):.2f}",
          " ".join(f"{k} x{v}" for k, v in sorted(statuses.items())), str(errors), str(seen)]],
    ))  # fmt: skip
    if seen != 1:
        raise CheckFailed(f"engine saw {seen} POST /generate, expected exactly 1")
    if set(statuses) != {"503"}:
        raise CheckFailed(f"expected only 503 answers, got {dict(statuses)}")
    print("\n  check: engine-sim /_sim/stats requests['POST /generate'] == 1  OK")


async def section_c(svcs: Services, plan: Plan) -> None:
    """A burst of simultaneous admits: exactly one forwarded, the rest rejected at once."""
    n = plan.burst
    heading(f"c. exact admission ({n} simultaneous POST /generate, max_in_flight 1)")
    with svcs.scope():
        engine = svcs.engine("--no-cpu", "--seconds", "60", "--memory-mb", "16")
        _, proxy = svcs.gatekeeper(engine)
        sent: dict[int, float] = {}

        async def on_headers_sent(
            _s: aiohttp.ClientSession,
            ctx: types.SimpleNamespace,
            _p: aiohttp.TraceRequestHeadersSentParams,
        ) -> None:
            if ctx.trace_request_ctx:  # the burst's requests only
                sent[ctx.trace_request_ctx["i"]] = time.perf_counter()

        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(on_headers_sent)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
            print(
                f"\n  client: aiohttp {aiohttp.__version__} in this process, "
                f"TCPConnector(limit=0): {n} new connections, all tasks created at once"
            )
            overflows_before = listen_overflows()
            t0 = time.perf_counter()

            async def one(i: int) -> tuple[int, str, float, float]:
                async with session.post(
                    proxy + "/generate",
                    data=GENERATE_BODY,
                    headers=_JSON,
                    trace_request_ctx={"i": i},
                ) as resp:
                    t = time.perf_counter()
                    await resp.read()
                    reason = resp.headers.get("X-Gatekeeper-Reason", "-")
                    return resp.status, reason, t - t0, t - sent.get(i, t)

            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            try:
                # The admitted one runs for 60 s; everything else must answer quickly.
                done: set[asyncio.Task[tuple[int, str, float, float]]] = set()
                pending = set(tasks)
                deadline = time.monotonic() + 30
                while len(done) < n - 1 and pending and time.monotonic() < deadline:
                    more, pending = await asyncio.wait(
                        pending, timeout=0.1, return_when=asyncio.FIRST_COMPLETED
                    )
                    done |= more
                overflows = listen_overflows() - overflows_before
                # The 499 "no"s can all be out before the one admitted request has crossed
                # gatekeeper to the engine; give it a few seconds to arrive (or not).
                stats = await _sim_stats(session, engine)
                for _ in range(50):
                    if stats["requests"].get("POST /generate", 0):
                        break
                    await asyncio.sleep(0.1)
                    stats = await _sim_stats(session, engine)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    results = [t.result() for t in done if not t.cancelled() and t.exception() is None]
    failures = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    rejected = [r for r in results if r[0] == 503]
    codes = Counter(f"{r[0]} {r[1]}" for r in results)
    forwarded = stats["requests"].get("POST /generate", 0)
    print()
    print(
        f"  answers: {dict(codes)}; client errors: {len(failures)}; still waiting "
        f"(the admitted generation): {len(pending)}"
    )
    if rejected:
        from_burst = [r[2] for r in rejected]
        own = [r[3] for r in rejected]
        print()
        print(
            table(
                ["rejections", "measured from", "p50", "p99", "max"],
                [
                    [
                        str(len(rejected)),
                        "burst start (all tasks created)",
                        ms(percentile(from_burst, 50)),
                        ms(percentile(from_burst, 99)),
                        ms(max(from_burst)),
                    ],
                    [
                        str(len(rejected)),
                        "own request headers sent",
                        ms(percentile(own, 50)),
                        ms(percentile(own, 99)),
                        ms(max(own)),
                    ],
                ],
            )
        )
    print(
        f"\n  kernel TcpExt ListenOverflows during the burst: {overflows} (SYNs dropped because "
        "the listen backlog was full; each costs the client a 1 s SYN retransmit)"
    )
    print(f"  engine-sim POST /generate received: {forwarded}")
    if forwarded != 1 or len(rejected) != n - 1:
        raise CheckFailed(f"forwarded {forwarded} (expected 1), rejected {len(rejected)}/{n - 1}")
    print("  check: exactly 1 forwarded, every other request answered 503  OK")


async def section_d(svcs: Services, plan: Plan) -> None:
    """RSS of gatekeeper while a large response streams through it."""
    size = plan.download_bytes
    heading(f"d. memory (gatekeeper RSS around a {size / MiB:,.0f} MiB download)")
    with svcs.scope():
        engine = svcs.engine("--no-cpu", "--memory-mb", "1")
        gk, proxy = svcs.gatekeeper(engine)
        proc = psutil.Process(gk.pid)
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            await _download(session, f"{proxy}/download?bytes={16 * MiB}")  # warm-up
            await asyncio.sleep(0.5)
            before = proc.memory_info().rss
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    with contextlib.suppress(psutil.Error):
                        peak.append(proc.memory_info().rss)
                    stop.wait(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            url = f"{proxy}/download?bytes={size}"
            print(f"  client: aiohttp GET {url} (body read and discarded)")
            try:
                got, seconds = await _download(session, url)
            finally:
                stop.set()
                sampler.join()
            await asyncio.sleep(1.0)
            after = proc.memory_info().rss
            direct_got, direct_seconds = await _download(session, f"{engine}/download?bytes={size}")
    if got != size or direct_got != size:
        raise CheckFailed(f"download sizes {got} / {direct_got}, expected {size}")
    print()
    print(
        table(
            [
                "RSS before",
                "peak during",
                "after",
                "peak - before",
                "samples",
                "through gatekeeper",
                "engine-sim direct",
            ],
            [
                [
                    f"{before / MiB:.1f} MiB",
                    f"{max(peak) / MiB:.1f} MiB",
                    f"{after / MiB:.1f} MiB",
                    f"{(max(peak) - before) / MiB:+.1f} MiB",
                    str(len(peak)),
                    f"{size / MiB / seconds:,.0f} MiB/s",
                    f"{size / MiB / direct_seconds:,.0f} MiB/s",
                ]
            ],
        )
    )
    growth = max(peak) - before
    if growth > 20 * MiB:
        raise CheckFailed(f"RSS grew {growth / MiB:.1f} MiB during the download (bound: 20 MiB)")
    print("\n  check: peak RSS growth <= 20 MiB (issue #2 §2)  OK")


_JSON = {"Content-Type": "application/json"}


async def _post_generate(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url, data=GENERATE_BODY, headers=_JSON) as resp:
        await resp.read()
        return resp.status


async def _sim_stats(session: aiohttp.ClientSession, engine: str) -> dict[str, dict[str, int]]:
    async with session.get(f"{engine}/_sim/stats") as resp:
        resp.raise_for_status()
        data: dict[str, dict[str, int]] = await resp.json()
        return data


async def _wait_active(session: aiohttp.ClientSession, engine: str, n: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with session.get(f"{engine}/_sim/stats") as resp:
            if (await resp.json()).get("active_generations") == n:
                return
        await asyncio.sleep(0.05)
    raise CheckFailed(f"engine-sim never had {n} active generation(s)")


async def _download(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    start = time.perf_counter()
    got = 0
    async with session.get(url) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_any():
            got += len(chunk)
    return got, time.perf_counter() - start


# ---------------------------------------------------------------- main

SECTIONS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d}


def environment() -> str:
    def version(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        return (
            (out.stdout or out.stderr).strip().splitlines()[0]
            if (out.stdout or out.stderr)
            else "?"
        )

    pkgs = version("dpkg-query", "-W", "-f", "${Package} ${Version}, ", "nginx", "wrk", "hey")
    commit = version("git", "-C", str(ROOT), "describe", "--always", "--dirty")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"  date:     {now}",
            f"  machine:  nproc {os.cpu_count()}, {platform.machine()}, "
            f"{psutil.virtual_memory().total / GiB:.1f} GiB RAM, Linux {platform.release()}",
            f"  python:   {platform.python_version()}; aiohttp {aiohttp.__version__}; "
            f"psutil {psutil.__version__}",
            f"  packages: {pkgs.strip(' ,')}",
            f"  gatekeeper: {commit}",
        ]
    )


def missing_binaries(sections: str) -> list[str]:
    need = {b for s in sections for b in NEEDS[s]}
    return sorted(b for b in need if shutil.which(b) is None)


async def run_sections(svcs: Services, plan: Plan, sections: str) -> list[str]:
    failed: list[str] = []
    for key in sections:
        try:
            await SECTIONS[key](svcs, plan)
        except CheckFailed as exc:
            print(f"\n  CHECK FAILED: {exc}", flush=True)
            failed.append(f"{key}: {exc}")
    return failed


def _sigterm(_signo: int, _frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="~2 s load phases, 256 MiB download")
    parser.add_argument("--sections", default="abcd", help="subset to run, e.g. a,c (default abcd)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = parser.parse_args(argv)
    sections = "".join(s for s in args.sections.lower() if s.isalnum())
    if not sections or set(sections) - set(SECTIONS):
        parser.error(f"--sections takes letters from {''.join(SECTIONS)}, got {args.sections!r}")
    missing = missing_binaries(sections)
    if missing:
        pkgs = " ".join(sorted({APT_PACKAGE[b] for b in missing}))
        print(
            f"bench: missing {', '.join(missing)}; install with:\n"
            f"  sudo apt-get install -y {pkgs}\n"
            f"(or run the other sections: --sections ...)",
            file=sys.stderr,
        )
        return 2
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="gatekeeper-bench-"))
    svcs = Services(workdir)
    print("# gatekeeper bench" + (" (--quick)" if args.quick else ""))
    print(environment())
    print(f"  workdir:  {workdir} (logs, nginx.conf, rules.yaml)")
    failed: list[str] = []
    ok = False
    try:
        failed = asyncio.run(run_sections(svcs, plan, sections))
        ok = not failed
    except KeyboardInterrupt:
        print("\nbench: interrupted, stopping everything", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError, aiohttp.ClientError) as exc:
        print(f"\nbench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        svcs.stop_all()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nbench: logs kept in {workdir}", file=sys.stderr)
    if failed:
        print("\nFAILED checks:\n" + "\n".join(f"  {f}" for f in failed))
        return 1
    print("\nall checks held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
