"""What one page of a user's own list costs as the store grows (issue #20 §2).

A SQLite state directory holding ``N`` finished jobs, each with its creator's
handle, spread over 100 client keys (so one user has N/100), for N = 1,000,
10,000 and 100,000; for one user: the first page of 100, the last page
(reached through every cursor), and a page filtered by a state that matches
1 job in 50 (the filter reads at most ``store.LIST_SCAN`` handles a call).
Prints the median and p99 of ``client_handles`` (the store's part: one indexed
range read), which should stay flat as N grows.

    .venv/bin/python bench/listing.py [--sizes 1000,10000,100000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.sqlite import SqliteJobStore

CLIENTS = 100
PAGE = 100


def fill(store: SqliteJobStore, n: int) -> None:
    for i in range(n):
        job_id = secrets.token_urlsafe(18)
        client = f"hdr:user{i % CLIENTS}"
        w = store.body_writer(job_id)
        w.write(b"{}")
        store.create(
            JobRecord(
                id=job_id,
                route="generate",
                client=client,
                held=False,
                method="POST",
                target="/generate",
                headers=(),
                coalesce_key=None,
                created=float(i),
                body_size=w.commit(),
            )
        )
        store.add_handle(Handle(job_id, job_id, client, False, float(i)))
        store.mark_running(job_id, float(i))
        state = JobState.FAILED if i % (50 * CLIENTS) < CLIENTS else JobState.DONE
        store.finish(job_id, state, None, i + 1.0)


def timed(call: Callable[[], object], repeat: int) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        took.append(time.perf_counter() - t)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.99) - 1]


def measure(n: int, repeat: int) -> list[tuple[float, float]]:
    """(median, p99) of the first page, the last page and a filtered page at ``n`` jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteJobStore.open(Path(tmp))
        try:
            fill(store, n)
            user = "hdr:user7"
            last = None
            while True:  # walk to the last page: its cursor
                page = store.client_handles(user, limit=PAGE, before=last)
                if page.next is None:
                    break
                last = page.next
            return [
                timed(lambda: store.client_handles(user, limit=PAGE), repeat),
                timed(lambda: store.client_handles(user, limit=PAGE, before=last), repeat),
                timed(
                    lambda: store.client_handles(user, limit=PAGE, states=[JobState.FAILED]),
                    repeat,
                ),
            ]
        finally:
            store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    print(f"{'jobs':>8} {'per user':>9} {'first page':>16} {'last page':>16} {'filtered':>16}")
    for n in (int(s) for s in args.sizes.split(",")):
        rows = measure(n, args.repeat)
        cells = " ".join(f"{m * 1e3:6.2f}/{p * 1e3:6.2f} ms" for m, p in rows)
        print(f"{n:>8} {n // CLIENTS:>9} {cells}")
    print("(median/p99 of client_handles, a page of 100)")


if __name__ == "__main__":
    main()
