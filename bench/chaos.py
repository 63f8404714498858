"""The chaos driver's long run: thousands of hostile exchanges and faults, then the counts.

Run with the project's virtualenv from the repository root::

    .venv/bin/python bench/chaos.py                          # 5000 exchanges or 10 minutes
    .venv/bin/python bench/chaos.py --seed 7 --exchanges 20000 --minutes 30
    .venv/bin/python bench/chaos.py --seed 1234 --keep       # keep the logs of a failure
    .venv/bin/python bench/chaos.py --engines 2              # two engines in upstream.engines
    sudo .venv/bin/python bench/chaos.py --storage      # state dir on a tmpfs: disk-full faults
    .venv/bin/python bench/chaos.py --boxes 2 --minutes 8   # two boxes, one PostgreSQL

The driver is ``tests/chaos.py`` (the fast CI run is ``tests/test_chaos.py``). It starts
``gatekeeper engine-sim`` and ``gatekeeper run`` on 127.0.0.1 free ports, runs phases of
``--phase-size`` exchanges that alternate ``on_client_disconnect`` (finish, cancel, and
mixed: toggled by reloads mid-phase) and ``max_in_flight`` (1 and 2), with engine kills,
SIGHUP and ``POST /reload`` in the middle, checks the invariants after each phase, and
ends with a SIGTERM drain. ``--engines N`` runs N engine-sims listed in
``upstream.engines`` (one slot each, so the limit is N in every phase; a random one is
killed), and the invariants hold per engine too. ``--storage`` (root) puts the state
directory on a 16 MiB tmpfs, adds held jobs on a queue route and a ``disk_full`` fault
(filled, then freed), and checks that no answer is a bare 500 (issue #18 §1). It stops
at ``--exchanges`` or after ``--minutes``, whichever comes first (the phase running then
is completed). ``--boxes 2`` runs ``tests/chaos_boxes.py`` instead: two boxes on one
real PostgreSQL (``tests/pgserver.py``), each with its own engine-sim, the exchanges
spread over both and the invariants checked across them (issue #21). Exit status: 0
every invariant held, 1 one failed (the message names the seed to replay and the temp
dir is kept)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos import Chaos, InvariantViolation
from support import small_tmpfs

SCHEDULE = [("finish", 1), ("cancel", 1), ("finish", 2), ("cancel", 2), ("mixed", 1), ("mixed", 2)]


async def run(args: argparse.Namespace, tmp: Path) -> int:
    if args.boxes:
        return await run_boxes(args, tmp)
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        storage = stack.enter_context(small_tmpfs(tmp / "fs", "16m")) if args.storage else None
        return await _run(args, tmp, storage, deadline, started)


async def _run(
    args: argparse.Namespace, tmp: Path, storage: Path | None, deadline: float, started: float
) -> int:
    async with Chaos(
        tmp, args.seed, concurrency=args.concurrency, engines=args.engines, storage=storage
    ) as c:
        try:
            sent, i = 0, 0
            while sent < args.exchanges and time.monotonic() < deadline:
                mode, limit = SCHEDULE[i % len(SCHEDULE)]
                if args.engines:  # one slot per engine: the limit is theirs
                    limit = args.engines
                n = min(args.phase_size, args.exchanges - sent)
                r = await c.phase(n, mode, limit)
                sent, i = sent + n, i + 1
                print(
                    f"phase {r.index}: {mode} limit {limit}, {n} exchanges in {r.seconds:.1f}s,"
                    f" faults {dict(r.faults)}: ok",
                    flush=True,
                )
            drain = await c.sigterm_phase()
            print(f"sigterm: {drain}")
        except InvariantViolation as exc:
            print(c.summary())
            print(f"\nFAILED: {exc}", file=sys.stderr)
            return 1
        print(c.summary())
    print(f"all invariants held ({time.monotonic() - started:.0f} s)")
    return 0


async def run_boxes(args: argparse.Namespace, tmp: Path) -> int:
    """Two boxes on one PostgreSQL (chaos_boxes): phases until --exchanges or --minutes."""
    from chaos_boxes import Boxes
    from pgserver import PgServer, find_pg_bin

    if args.boxes != 2:
        print("--boxes: only 2 is supported", file=sys.stderr)
        return 2
    bindir = find_pg_bin()
    if bindir is None:
        print("--boxes needs PostgreSQL (apt-get install postgresql)", file=sys.stderr)
        return 2
    server = await asyncio.to_thread(PgServer.start, bindir)
    started = time.monotonic()
    deadline = started + args.minutes * 60
    try:
        async with Boxes(tmp, args.seed, server.dsn, "chaos", concurrency=args.concurrency) as b:
            try:
                sent = 0
                while sent < args.exchanges and time.monotonic() < deadline:
                    n = min(args.phase_size, args.exchanges - sent)
                    r = await b.phase(n)
                    sent += n
                    print(
                        f"phase {r.index}: {n} exchanges in {r.seconds:.1f}s, faults"
                        f" {dict(r.faults)}, checked {r.checks}: ok",
                        flush=True,
                    )
                await b.sigterm()
            except InvariantViolation as exc:
                print(b.summary())
                print(f"\nFAILED: {exc}", file=sys.stderr)
                return 1
            print(b.summary())
    finally:
        await asyncio.to_thread(server.stop)
    print(f"all invariants held ({time.monotonic() - started:.0f} s)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="schedule seed (default: 1)")
    p.add_argument("--exchanges", type=int, default=5000, help="total exchanges (default: 5000)")
    p.add_argument("--minutes", type=float, default=10.0, help="time bound (default: 10)")
    p.add_argument("--phase-size", type=int, default=250, help="exchanges per phase")
    p.add_argument("--concurrency", type=int, default=4, help="exchanges at once (default: 4)")
    p.add_argument(
        "--engines", type=int, default=0, help="N engines in upstream.engines (default: one)"
    )
    p.add_argument(
        "--boxes", type=int, default=0, help="2: two boxes on one PostgreSQL (issue #21)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, rules)")
    p.add_argument(
        "--storage", action="store_true", help="state dir on a tmpfs with disk-full faults (root)"
    )
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gatekeeper-chaos-"))
    code = 1
    try:
        code = asyncio.run(run(args, tmp))
    except KeyboardInterrupt:
        code = 130
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
