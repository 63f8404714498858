"""The invariants of the two-box chaos run (``chaos_boxes``), checked across the boxes at
the end of a phase from the database (``jobs``: state, run_box; ``handles``), the engines'
``/_sim/stats`` ledgers and both boxes' answers."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import chaos_identity
from chaos_boxes import FINAL_TIMEOUT, JOBS, RUNNING, USERS, Boxes


async def check(b: Boxes, outcomes: dict[str, Counter[str]]) -> tuple[list[str], dict[str, int]]:
    """The cross-box invariants at the end of a phase (``chaos_boxes``' module text)."""
    bad: list[str] = []
    deadline = time.monotonic() + FINAL_TIMEOUT
    while True:
        jobs, handles = await b._rows()
        live = [j["id"] for j in jobs if j["state"] in RUNNING]
        if not live or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    if live:
        bad.append(f"{len(live)} job(s) never reached a final state: {live[:3]}")
    state = {j["id"]: j["state"] for j in jobs}
    by_handle = {h["id"]: h for h in handles}
    for box in b.boxes:
        stats = await b.engine_stats(box)
        if stats is not None:
            box.ledger.fold(stats)
    started = [j for j in jobs if j["run_box"] is not None and j["started"] is not None]
    received = sum(b.ledger.requests.get("POST /generate", 0) for b in b.boxes)
    # The engines' counters are reset each phase: compare with this phase's jobs.
    if received > len(started) - b.started_before:
        bad.append(
            f"engines received {received} generations but"
            f" {len(started) - b.started_before} jobs started"
        )
    for box in b.boxes:
        abandoned = sum(1 for j in started if j["run_box"] == box.id and j["state"] == "cancelled")
        if box.ledger.peak_active > 1 + abandoned:
            bad.append(
                f"engine of box {box.name} ran {box.ledger.peak_active} at once > its 1 slot"
                f" (+{abandoned} abandoned)"
            )
    lost = [h for h in b.handles if h not in by_handle]
    if lost:
        bad.append(f"{len(lost)} handle(s) given to clients not in the database: {lost[:3]}")
    for h, who in b.handles.items():
        row = by_handle.get(h)
        if row is not None and row["client"] not in (who, f"hdr:{who}"):
            bad.append(f"handle {h} of {who} belongs to client {row['client']}")
    known = sorted(h for h in b.handles if h in by_handle)
    sample = random.Random(f"{b.seed}:check:{len(b.results)}").sample(known, min(40, len(known)))
    for h in sample:
        seen = []
        for box in b.boxes:
            async with b.http.get(f"{box.url}{JOBS}/{h}") as r:
                await b.answer(r, b.handles[h])
                seen.append(r.status if r.status != 200 else (await r.json())["state"])
        # A detached handle (DELETE) is cancelled whatever its shared job became.
        detached = by_handle[h]["detached"] is not None
        want = "cancelled" if detached else state.get(by_handle[h]["job_id"])
        if len(set(seen)) != 1 or (seen[0] != want and seen[0] != 404):
            bad.append(
                f"handle {h} (held {by_handle[h]['held']}, job {by_handle[h]['job_id']}):"
                f" boxes a, b answer {seen}, the database says {want}"
            )
    for who in USERS:
        for box in b.boxes:
            async with b.http.get(box.url + JOBS, headers={"X-User": who}) as r:
                await b.answer(r, who)
    if b.problems:
        bad.append(f"{len(b.problems)} refusal(s) not JSON detail+reason: {b.problems[0]}")
        b.problems.clear()
    if crossed := chaos_identity.crossed(outcomes):
        bad.append(f"{crossed} exchange(s) crossed identities")
    if stuck := sum(c["STUCK"] for c in outcomes.values()):
        bad.append(f"{stuck} exchange(s) stuck")
    for box in b.boxes:
        if "Traceback" in box.proc.output():
            bad.append(f"box {box.name} logged a traceback")
    checks = {
        "jobs_final": len(jobs) - len(live),
        "handles_in_db": len(b.handles) - len(lost),
        "read_on_both_boxes": len(sample),
        "engine_generations": received,
        "jobs_started": len(started) - b.started_before,
        **{f"peak_{box.name}": box.ledger.peak_active for box in b.boxes},
    }
    return bad, checks
