"""gatekeeper benchmarks: figures, not adjectives (issue #2: "speed is measured").

Run with the project's virtualenv from the repository root::

    .venv/bin/python bench/run.py            # full run, about 5 minutes
    .venv/bin/python bench/run.py --quick    # ~2 s per load phase, 1 repeat
    .venv/bin/python bench/run.py --smoke    # every section, as small as it gets (< 60 s)
    .venv/bin/python bench/run.py --sections a,c

Everything is started here, on 127.0.0.1 and free ports, and stopped again on success,
failure and Ctrl-C: nginx and HAProxy with generated configs, ``bench/bare_proxy.py``,
``gatekeeper engine-sim``, ``bench/cpu_engine.py`` and ``gatekeeper run``. Load comes
from ``wrk`` and ``hey`` and from aiohttp in this process.

Sections (one module each; each prints its figures and the exact command lines):

a. ``passthrough``: req/s and latency of a small static file from nginx, directly and
   through HAProxy, the bare aiohttp proxy and gatekeeper, at 1 and 32 connections.
b. ``rejection``: gatekeeper's ``503 busy`` against nginx's and HAProxy's ``return 503``.
c. ``burst``: 500 simultaneous admits; exactly one forwarded, how fast the rest hear no.
d. ``stream``: a 1 GiB download direct and through each proxy; each proxy's RSS.
e. ``flood``: one generation's wall time, idle and under a 1,000-connection flood.
f. ``queue``: the waiting room with 1,000 waiters: the pure core's operations, async
   submissions, dispatch through the engine, 1,000 held connections at once.
h. ``engines``: two engine-sims behind one gatekeeper (``upstream.engines``): the jobs
   each ran, each engine's own peak, the makespan against one engine; ``kill -9`` of one.

The run ends with a summary: gatekeeper's figures over each baseline's, measured in this
run, against the issue's targets. Exit status: 0 when every check held (a missed target
is reported, not a failure), 1 when a check failed, 2 when a required binary is missing
(the message says what to ``apt-get install``), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import types
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import psutil

if __package__ in (None, ""):  # run as ``python bench/run.py``: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.burst import section_c
from bench.engines import section_h
from bench.flood import section_e
from bench.passthrough import section_a
from bench.procs import Services
from bench.rejection import section_b
from bench.report import FULL, QUICK, SMOKE, CheckFailed, GiB, Plan, Summary
from bench.stream import section_d
from bench.waiting import section_f

ROOT = Path(__file__).resolve().parent.parent
Section = Callable[[Services, Plan, Summary], Awaitable[None]]
SECTIONS: dict[str, Section] = {
    "a": section_a,
    "b": section_b,
    "c": section_c,
    "d": section_d,
    "e": section_e,
    "f": section_f,
    "h": section_h,
}
# Which binaries each section needs; each is the name of its Debian package too.
NEEDS: dict[str, tuple[str, ...]] = {
    "a": ("nginx", "haproxy", "wrk"),
    "b": ("nginx", "haproxy", "hey"),
    "c": (),
    "d": ("haproxy",),
    "e": ("nginx", "wrk", "hey"),
    "f": (),
    "h": (),
}


def environment() -> str:
    def version(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"

    tools = ("haproxy", "hey", "nginx", "wrk")
    pkgs = version("dpkg-query", "-W", "-f", "${Package} ${Version}, ", *tools)
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


async def run_sections(svcs: Services, plan: Plan, sections: str, summary: Summary) -> list[str]:
    failed: list[str] = []
    for key in sections:
        try:
            await SECTIONS[key](svcs, plan, summary)
        except CheckFailed as exc:
            print(f"\n  CHECK FAILED: {exc}", flush=True)
            failed.append(f"{key}: {exc}")
    return failed


def _sigterm(_signo: int, _frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="~2 s load phases, 1 repeat")
    size.add_argument("--smoke", action="store_true", help="every section, smallest (< 60 s)")
    parser.add_argument("--sections", default="".join(SECTIONS), help="subset to run, e.g. a,c")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = parser.parse_args(argv)
    sections = "".join(s for s in args.sections.lower() if s.isalnum())
    if not sections or set(sections) - set(SECTIONS):
        parser.error(f"--sections takes letters from {''.join(SECTIONS)}, got {args.sections!r}")
    missing = missing_binaries(sections)
    if missing:
        print(
            f"bench: missing {', '.join(missing)}; install with:\n"
            f"  sudo apt-get install -y {' '.join(missing)}\n"
            f"(or run the other sections: --sections ...)",
            file=sys.stderr,
        )
        return 2
    plan, mode = (SMOKE, " (--smoke)") if args.smoke else (FULL, "")
    if args.quick:
        plan, mode = QUICK, " (--quick)"
    signal.signal(signal.SIGTERM, _sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="gatekeeper-bench-"))
    svcs = Services(workdir)
    summary = Summary()
    print("# gatekeeper bench" + mode)
    print(environment())
    print(f"  workdir:  {workdir} (logs, nginx/, haproxy/, rules.yaml)")
    failed: list[str] = []
    ok = False
    try:
        failed = asyncio.run(run_sections(svcs, plan, sections, summary))
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
    print("\n## summary (gatekeeper over each baseline, this run)\n")
    print(summary.render())
    if failed:
        print("\nFAILED checks:\n" + "\n".join(f"  {f}" for f in failed))
        return 1
    print("\nall checks held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
