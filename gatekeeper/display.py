"""Rendering the status document for a person: progress bars and one-line summaries.

Pure string functions over the ``/status`` JSON, shared by ``gatekeeper demo``
and ``gatekeeper status``.
"""

from __future__ import annotations

from typing import Any


def bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    m, s = divmod(seconds, 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def generation_line(doc: dict[str, Any], width: int = 20) -> str:
    running = doc.get("running") or []
    if not running:
        return "idle " + bar(0.0, width)
    oldest = running[0]
    elapsed, expected = oldest["elapsed_seconds"], oldest["expected_seconds"]
    frac = elapsed / expected if expected else 0.0
    left = expected - elapsed
    eta = f"~{duration(left)} left" if left > 0 else f"overrunning by {duration(-left)}"
    return (
        f"generating {bar(frac, width)} {min(frac, 9.99) * 100:3.0f}% "
        f"{duration(elapsed)}/{duration(expected)} {eta}"
    )


def status_line(doc: dict[str, Any]) -> str:
    counts = doc.get("counts", {})
    state = (
        "accepting"
        if doc.get("accepting")
        else "NOT accepting (" + ",".join(doc.get("reasons", [])) + ")"
    )
    up = {True: "up", False: "DOWN", None: "?"}[doc.get("upstream_up")]
    return (
        f"{generation_line(doc)} | in-flight {doc['in_flight']}/{doc['max_in_flight']}"
        f" | cpu {doc['cpu_percent']:.0f}% mem {doc['memory_percent']:.0f}%"
        f" | admitted {counts.get('admitted', 0)} rejected {counts.get('rejected', 0)}"
        f" blocked {counts.get('blocked', 0)} | engine {up} | {state}"
    )
