"""What a batch costs gatekeeper (issue #20 §3): its store transaction and its archive.

Two figures, on the real SQLite store and the real archive code:

- ``create_batch`` of N items (the batch row, N job rows and their fairness-ring
  entries in one transaction), the median and worst of ``--repeat`` batches, on
  the event loop's thread as the service calls it;
- ``GET …/results?format=tar`` of N results of ``--mib`` MiB each: throughput of
  ``archive.tar_chunks`` reading the files from disk (page cache), and the peak of
  Python allocations meanwhile (``tracemalloc``), which stays one read chunk
  whatever the batch weighs.

    .venv/bin/python bench/batch.py [--items 20] [--repeat 50] [--mib 25]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from gatekeeper.jobs.batch import archive
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.sqlite import SqliteJobStore


def create_batches(directory: Path, items: int, repeat: int) -> list[float]:
    store = SqliteJobStore.open(directory / "state")
    took = []
    try:
        for _ in range(repeat):
            batch_id = secrets.token_urlsafe(18)
            rows = []
            for i in range(items):
                job_id = secrets.token_urlsafe(18)
                w = store.body_writer(job_id)
                w.write(b'{"lyrics": "[verse] %d"}' % i)
                size = w.commit()
                rows.append(
                    JobRecord(
                        job_id,
                        "generate",
                        "bench",
                        False,
                        "POST",
                        "/generate",
                        (),
                        None,
                        size,
                        created=1.0,
                        batch=batch_id,
                    )
                )
            started = time.perf_counter()
            store.create_batch(BatchRecord(batch_id, "bench", "batch", 1.0, items), rows)
            took.append(time.perf_counter() - started)
    finally:
        store.close()
    return took


def stream_archive(directory: Path, items: int, mib: int) -> tuple[int, float, int]:
    block = os.urandom(1024 * 1024)
    files = []
    for i in range(items):
        path = directory / f"result-{i}"
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(block)
        files.append((archive.member_name(i, f"job{i}", "audio/wav"), path))
    tracemalloc.start()
    started, total = time.perf_counter(), 0
    for piece in archive.tar_chunks(b"{}", files, 0.0):
        total += len(piece)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return total, elapsed, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--mib", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        took = create_batches(Path(tmp), args.items, args.repeat)
        print(
            f"create_batch of {args.items} jobs: median {statistics.median(took) * 1e3:.2f} ms,"
            f" worst {max(took) * 1e3:.2f} ms ({args.repeat} batches)"
        )
        total, elapsed, peak = stream_archive(Path(tmp), args.items, args.mib)
        mib = total / 2**20
        print(
            f"tar of {args.items} x {args.mib} MiB ({mib:.0f} MiB): {elapsed:.2f} s,"
            f" {mib / elapsed:.0f} MiB/s; peak Python allocation {peak / 1024:.0f} KiB"
        )


if __name__ == "__main__":
    main()
