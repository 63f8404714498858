"""Rendering the status document for a person: progress bars and one-line summaries.

Pure string functions over the ``/status`` JSON, shared by ``gatekeeper demo``
and ``gatekeeper status``.
"""

from __future__ import annotations

from typing import Any

from gatekeeper.core.vocab import OUTCOMES


def bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    m, s = divmod(seconds, 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def size(n: float) -> str:
    """Bytes for a person: ``512 B``, ``1.2 KiB``, ``10.0 GiB``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def generation_line(doc: dict[str, Any], width: int = 20) -> str:
    running = doc.get("running") or []
    if not running:
        return "idle " + bar(0.0, width)
    oldest = running[0]
    elapsed, expected = oldest["elapsed_seconds"], oldest["expected_seconds"]
    frac = elapsed / expected if expected else 0.0
    left = expected - elapsed
    eta = f"~{duration(left)} left" if left > 0 else f"overrunning by {duration(-left)}"
    # The engine's own report (a Gradio app's progress frames) wins over elapsed/expected.
    reported, what = oldest.get("progress"), oldest.get("progress_description")
    engine = ""
    if reported is not None:
        frac = float(reported)
        engine = f" (engine: {what})" if what else " (engine)"
    elif what:
        engine = f" (engine: {what})"
    return (
        f"generating {bar(frac, width)} {min(frac, 9.99) * 100:3.0f}%{engine} "
        f"{duration(elapsed)}/{duration(expected)} {eta}"
    )


# The order every view shows the request counts in: the generations first (started at
# once, waited their turn, answered from another's), then the rest. An outcome this list
# does not know (a newer gatekeeper's) still shows, after these.
COUNT_ORDER = ("admitted", "queued", "coalesced", "passed", "rejected", "blocked")
_CLASSIC_OUTCOMES = frozenset({"admitted", "passed", "rejected", "blocked"})


def count_items(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Every outcome of ``counts`` in ``COUNT_ORDER`` (the classic four even when absent;
    queued/coalesced exist since the waiting room, issue #9: an older document has none)."""
    known = [k for k in COUNT_ORDER if k in counts or k in _CLASSIC_OUTCOMES]
    extra = sorted(k for k in counts if k not in COUNT_ORDER and k in OUTCOMES)
    return [(k, int(counts.get(k, 0))) for k in known + extra]


def status_line(doc: dict[str, Any]) -> str:
    counts = doc.get("counts") or {}
    state = (
        "accepting"
        if doc.get("accepting")
        else "NOT accepting (" + ",".join(doc.get("reasons", [])) + ")"
    )
    up = {True: "up", False: "DOWN", None: "?"}[doc.get("upstream_up")]
    q = doc.get("queue")
    queued = (
        f" | queue {q.get('waiting', 0)}/{q.get('max_waiting', 0)}" if isinstance(q, dict) else ""
    )
    return (
        f"{generation_line(doc)} | in-flight {doc['in_flight']}/{doc['max_in_flight']}{queued}"
        f" | cpu {doc['cpu_percent']:.0f}% mem {doc['memory_percent']:.0f}%"
        " | "
        + " ".join(f"{k} {v}" for k, v in count_items(counts) if k != "passed")
        + f" | engine {up} | {state}"
    )


# --------------------------------------------------------------------------- gatekeeper status

_UP = {True: "up", False: "DOWN (probe failed)", None: "unknown (no probe answered yet)"}


def _resource_line(doc: dict[str, Any], key: str, label: str, width: int) -> str:
    value = float(doc.get(key, 0.0))
    th = (doc.get("thresholds") or {}).get(key, {})
    over = (doc.get("overloaded") or {}).get(label, False)
    line = f"  {label:<11} {value:5.1f}% {bar(value / 100, width)}"
    if th:
        line += f" reject >{th['reject_above']:g}% recover <{th['recover_below']:g}%"
    return line + ("  OVERLOADED" if over else "")


# The opt-in signals of issue #11 §3: (status key, threshold key, overloaded key, label).
_SIGNALS = (
    ("cpu_pressure", "cpu_pressure", "cpu_pressure", "cpu psi"),
    ("memory_pressure", "memory_pressure", "memory_pressure", "memory psi"),
    ("io_pressure", "io_pressure", "io_pressure", "io psi"),
    ("gpu_memory_percent", "gpu_memory_percent", "gpu_memory", "gpu memory"),
    ("gpu_utilization_percent", "gpu_utilization_percent", "gpu_utilization", "gpu busy"),
)


def _signal_lines(doc: dict[str, Any], width: int) -> list[str]:
    """PSI and GPU readings that are read (absent ones say so once, in ``signals``)."""
    out: list[str] = []
    thresholds = doc.get("thresholds") or {}
    overloaded = doc.get("overloaded") or {}
    for key, th_key, over_key, label in _SIGNALS:
        value = doc.get(key)
        if value is None:
            continue
        th = thresholds.get(th_key)
        if th is None and not overloaded.get(over_key):
            continue  # read but not a threshold: /status and the metrics have it
        line = f"  {label:<11} {float(value):5.1f}% {bar(float(value) / 100, width)}"
        if th:
            line += f" reject >{th['reject_above']:g}% recover <{th['recover_below']:g}%"
        out.append(line + ("  OVERLOADED" if overloaded.get(over_key) else ""))
    signals = doc.get("signals") or {}
    absent = [f"{n} ({s.get('reason')})" for n, s in signals.items() if not s.get("live")]
    if absent and any(thresholds.get(k) for _, k, _, _ in _SIGNALS):
        out.append(f"  {'absent':<11} " + ", ".join(absent))
    return out


def status_report(doc: dict[str, Any], source: str = "", width: int = 30) -> list[str]:
    """The status document as a multi-line summary for ``gatekeeper status``."""
    reasons = doc.get("reasons") or []
    state = "accepting generations" if doc.get("accepting") else "NOT accepting: "
    state += ", ".join(reasons)
    lines = [f"gatekeeper{' at ' + source if source else ''}: {state}"]
    running = doc.get("running") or []
    if running:
        for gen in running:
            one = dict(doc, running=[gen])
            lines.append(f"  {gen['route']:<11} " + generation_line(one, width))
    else:
        lines.append(f"  {'generation':<11} idle")
    limit = f"  {'in-flight':<11} {doc.get('in_flight', 0)}/{doc.get('max_in_flight', 0)}"
    if doc.get("retry_after") is not None:
        limit += f"   (a new request now gets Retry-After: {doc['retry_after']})"
    lines.append(limit)
    expected = float(doc.get("expected_seconds", 0.0))
    samples = int(doc.get("expected_samples", 0))
    basis = (
        f"median of the last {samples} generation(s)"
        if samples
        else "initial estimate (admission.expected_seconds)"
    )
    lines.append(f"  {'expected':<11} {duration(expected)} per generation, {basis}")
    lines.append(_resource_line(doc, "cpu_percent", "cpu", width))
    lines.append(_resource_line(doc, "memory_percent", "memory", width))
    lines += _signal_lines(doc, width)
    engines = doc.get("engines") or []
    if len(engines) > 1 or any(e.get("removed") for e in engines):
        for e in engines:  # several engines (issue #11 §1): one line each
            state = "removed, finishing its job" if e.get("removed") else _UP.get(e.get("up"), "?")
            lines.append(
                f"  {'engine':<11} {e['name']}: {e.get('in_flight', 0)}/"
                f"{e.get('max_in_flight', 0)} running, {state}"
            )
    else:
        lines.append(f"  {'engine':<11} {_UP.get(doc.get('upstream_up'), '?')}")
    counts = count_items(doc.get("counts") or {})
    lines.append(f"  {'requests':<11} " + "  ".join(f"{k} {v}" for k, v in counts))
    by_reason = doc.get("rejections_by_reason") or {}
    if by_reason:
        pairs = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append(f"  {'turned away':<11} " + ", ".join(f"{k} {v}" for k, v in pairs))
    if "alerts" in doc:
        alerts = doc.get("alerts") or []
        if not alerts:
            lines.append(f"  {'alerts':<11} none firing")
        for a in alerts:
            lines.append(
                f"  {'ALERT':<11} [{a.get('severity', '?')}] {a.get('alertname', '?')}: "
                f"{a.get('summary', '')}"
            )
    ungated = doc.get("ungated")
    if isinstance(ungated, dict) and ungated.get("count"):
        last = ungated.get("last") or {}
        lines.append(
            f"  {'WARNING':<11} {ungated['count']} request(s) that look like generations passed "
            f"ungated (latest {last.get('method', '?')} {last.get('path', '?')} on route "
            f"{last.get('route', '?')!r}): gate them with a queue/admit/gradio route"
        )
    lines.extend(queue_lines(doc))
    if doc.get("draining"):
        lines.append(f"  {'draining':<11} shutting down, waiting for running generations")
    if "uptime_seconds" in doc:
        lines.append(f"  {'uptime':<11} {duration(float(doc['uptime_seconds']))}")
    return lines


# --------------------------------------------------------------------------- the waiting room


def queue_entry_line(e: dict[str, Any]) -> str:
    """One job of the status document's ``queue.entries``: no job id, a hashed client."""
    state = str(e.get("state", "?"))
    where = "running" if state == "running" else f"#{e.get('position', '?')}"
    held = "held" if e.get("held") else "async"
    parts = [f"{where:<7} {e.get('route', '?')} client {e.get('client', '?')} ({held})"]
    parts.append(f"waited {duration(float(e.get('waited_seconds') or 0))}")
    if e.get("elapsed_seconds") is not None:
        parts.append(f"running {duration(float(e['elapsed_seconds']))}")
    eta = e.get("eta_seconds")
    parts.append("ready: ?" if eta is None else f"ready in ~{duration(float(eta))}")
    if e.get("coalesced"):
        parts.append(f"+{e['coalesced']} coalesced")
    return "    " + ", ".join(parts)


def queue_lines(doc: dict[str, Any]) -> list[str]:
    """The ``queue`` and ``jobs`` objects (issue #9); nothing for a document without them."""
    lines: list[str] = []
    q = doc.get("queue")
    if isinstance(q, dict):
        line = (
            f"  {'queue':<11} {q.get('waiting', 0)}/{q.get('max_waiting', 0)} waiting"
            f" (max wait {duration(float(q.get('max_wait_seconds') or 0))},"
            f" {q.get('per_client', '?')} per client)"
        )
        if q.get("retry_after") is not None:
            line += f"   FULL: a new request now gets Retry-After: {q['retry_after']}"
        lines.append(line)
        lines.extend(queue_entry_line(e) for e in q.get("entries") or [] if isinstance(e, dict))
        more = int(q.get("waiting") or 0) - int(q.get("listed", q.get("waiting")) or 0)
        if more > 0:  # the document lists the first ones only (issue #18 §6)
            lines.append(f"    ... and {more} more waiting (gatekeeper status --all lists them)")
    lines.extend(box_lines(doc))
    j = doc.get("jobs")
    if isinstance(j, dict):
        line = f"  {'results':<11} {size(j.get('results_bytes') or 0)} kept"
        if j.get("max_bytes"):
            line += f" of {size(j['max_bytes'])}"
        if j.get("state_dir"):
            line += f" in {j['state_dir']}"
        lines.append(line)
        w = j.get("webhooks")
        if isinstance(w, dict):
            lines.append(webhook_line(w))
    return lines


def box_lines(doc: dict[str, Any]) -> list[str]:
    """The whole queue and every box of a shared job store (issue #21): its address, how
    long ago it stamped its heartbeat, what it runs; nothing with a store of one box."""
    q, boxes = doc.get("shared_queue"), doc.get("boxes")
    if not isinstance(q, dict) or not isinstance(boxes, list):
        return []
    if q.get("waiting") is None:
        line = f"  {'all boxes':<11} not read yet"
    else:
        line = (
            f"  {'all boxes':<11} {q['waiting']} waiting, {q.get('running', 0)} running"
            f" on {sum(1 for b in boxes if not b.get('stopped'))} box(es)"
        )
        if q.get("waiting"):
            line += f" (oldest waited {duration(float(q.get('oldest_wait_seconds') or 0))})"
    if q.get("error"):
        line += f"   STORE: {q['error']}"
    lines = [line]
    for b in boxes:
        if not isinstance(b, dict):
            continue
        me = " (this box)" if b.get("this") else ""
        if b.get("stopped"):
            state = "stopped"
        else:
            state = f"seen {duration(float(b.get('seen_age_seconds') or 0))} ago"
        lines.append(
            f"  {'box':<11} {b.get('id', '?')}{me} at {b.get('address') or '?'}: {state},"
            f" {b.get('running', 0)} running"
        )
        for j in b.get("jobs") or []:
            lines.append(
                f"    running {j.get('route', '?')} on {j.get('engine') or '?'}"
                f" client {j.get('client', '?')}, {duration(float(j.get('elapsed_seconds') or 0))}"
            )
    return lines


def webhook_line(w: dict[str, Any]) -> str:
    """The webhook outbox (issue #20 §1): backlog, its oldest, failing destinations."""
    line = f"  {'webhooks':<11} {w.get('backlog', 0)} undelivered"
    if w.get("backlog"):
        line += f" (oldest {duration(float(w.get('oldest_seconds') or 0))})"
    line += f", {w.get('in_flight', 0)} in flight"
    failing = w.get("failing") or []
    if failing:
        names = ", ".join(f"{d} for {duration(float(s))}" for d, s in failing)
        line += f"   FAILING: {names}"
    return line
