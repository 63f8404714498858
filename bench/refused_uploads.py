"""Bytes written for uploads that are refused (issue #18 §2), on real processes.

Starts ``gatekeeper engine-sim`` and ``gatekeeper run`` on 127.0.0.1 free ports
(``admission.queue.per_client: 1``), gives one client a long job, then sends
``--count`` distinct ``--mib`` MiB bodies as that client, each body sent whole
without waiting for an answer (no ``Expect``), as a plain HTTP client does. Prints,
per refusal and in total: the status and reason, the seconds to the answer, and
what the gatekeeper process wrote meanwhile (``/proc/<pid>/io``: ``wchar``, every
byte passed to write(2), files and sockets alike; ``write_bytes``, what reached
the block layer), and the peak size of the state dir's ``bodies/`` (sampled every
5 ms).

    python bench/refused_uploads.py [--count 8] [--mib 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from gatekeeper.cli.procs import Child, free_port, gatekeeper_argv

MiB = 1024 * 1024


def io_of(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = int(v)
    return out


def dir_bytes(d: Path) -> int:
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


async def post(port: int, user: str, body: bytes, *extra: str) -> tuple[int, str, float]:
    """The whole request sent at once (a client that does not wait); status, reason, s."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [
        "POST /generate HTTP/1.1",
        "Host: gk",
        f"X-User-Id: {user}",
        f"Content-Length: {len(body)}",
        *extra,
    ]

    async def upload() -> None:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        for i in range(0, len(body), MiB):
            writer.write(body[i : i + MiB])
            await writer.drain()

    sender = asyncio.create_task(upload())
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
        status = int(raw.split()[1])
        length = 0
        for line in raw.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":")[1])
        doc = json.loads(await reader.readexactly(length)) if length else {}
        return status, str(doc.get("reason", "")), time.monotonic() - t0
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--mib", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gk-refused-") as tmp:
        d = Path(tmp)
        eport, gport, aport = free_port(), free_port(), free_port()
        engine = Child(
            [
                *gatekeeper_argv("engine-sim"),
                "--listen",
                f"127.0.0.1:{eport}",
                "--seconds",
                "600",
                "--no-cpu",
                "--memory-mb",
                "1",
            ],
            d / "engine.log",
        )
        engine.wait_for(r"listening on http://")
        (d / "calm.json").write_text('{"cpu_percent": 5, "memory_percent": 5}')
        rules = d / "rules.yaml"
        rules.write_text(
            f"jobs: {{dir: {d / 'state'}}}\n"
            "admission:\n  max_in_flight: 1\n"
            f"  resources: {{source: file, file: {d / 'calm.json'}}}\n"
            "  queue: {per_client: 1, client_key: 'header:X-User-Id'}\n"
            f"limits: {{max_body_bytes: {(args.mib + 1) * MiB}}}\n"
        )
        gk = Child(
            [
                *gatekeeper_argv("run"),
                "--config",
                str(rules),
                "--upstream",
                f"http://127.0.0.1:{eport}",
                "--listen",
                f"127.0.0.1:{gport}",
                "--admin-listen",
                f"127.0.0.1:{aport}",
            ],
            d / "gatekeeper.log",
        )
        try:
            gk.wait_for(r"admin listening on http://")
            await asyncio.sleep(0.5)  # the first probe
            first = json.dumps({"lyrics": "the long one", "seconds": 600}).encode()
            status, _, _ = await post(gport, "alice", first, "Prefer: respond-async")
            print(f"first job of alice: {status}")
            bodies = d / "state" / "bodies"
            peak = [0]

            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], dir_bytes(bodies))
                    await asyncio.sleep(0.005)

            sampler = asyncio.create_task(sample())
            before = io_of(gk.pid)
            base = dir_bytes(bodies)
            seconds = 0.0
            for i in range(args.count):
                body = bytes([65 + i]) * (args.mib * MiB)
                s0 = io_of(gk.pid)["wchar"]
                status, reason, took = await post(gport, "alice", body)
                seconds += took
                wrote = io_of(gk.pid)["wchar"] - s0
                print(f"upload {i + 1}: {status} {reason} in {took:.2f} s, wchar +{wrote:,} B")
            sampler.cancel()
            after = io_of(gk.pid)
            wchar = after["wchar"] - before["wchar"]
            wbytes = after["write_bytes"] - before["write_bytes"]
            print(
                f"{args.count} refused uploads of {args.mib} MiB: {seconds:.2f} s in all;"
                f" gatekeeper wrote wchar {wchar:,} B, write_bytes {wbytes:,} B;"
                f" bodies/ peak {peak[0] - base:,} B over the first job's body"
            )
        finally:
            gk.stop()
            engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
