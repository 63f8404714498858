"""Formatting, the run's plan, and the summary every section adds its ratios to.

:class:`Summary` collects one :class:`Ratio` per compared figure (gatekeeper against a
baseline measured in the same run); ``bench/run.py`` prints them together at the end,
each with the issue's target and whether this run reached it. A missed target is
reported, not a failed check: checks (:class:`CheckFailed`) are about correctness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


class CheckFailed(Exception):
    """A figure the bench asserts (not a test: it only makes the exit status 1)."""


@dataclass(frozen=True)
class Plan:
    """How long and how big: the full run, ``--quick``, or ``--smoke`` (the test's)."""

    load_seconds: float
    warmup_seconds: float
    repeat: int  # load runs per figure (the median is reported)
    burst: int
    download_bytes: int
    generation_seconds: float  # one generation in section e when the box is idle
    flood_connections: int
    waiters: int  # section f: jobs in the waiting room at once


FULL = Plan(5.0, 1.0, 3, 500, GiB, 5.0, 1000, 1000)
QUICK = Plan(2.0, 1.0, 1, 500, 256 * MiB, 3.0, 1000, 1000)
SMOKE = Plan(1.0, 0.0, 1, 100, 64 * MiB, 0.5, 1000, 20)


@dataclass(frozen=True)
class Ratio:
    """gatekeeper's figure over a baseline's, against the issue's target ratio."""

    what: str
    gatekeeper: float
    baseline_name: str
    baseline: float
    unit: str
    target: float | None = None  # None: printed for scale only
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.gatekeeper / self.baseline if self.baseline else float("nan")

    def verdict(self) -> str:
        if self.target is None:
            return "-"
        ok = self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target
        sign = ">=" if self.higher_is_better else "<="
        return f"{sign} {self.target:g}x: {'reached' if ok else 'MISSED'}"


@dataclass
class Summary:
    ratios: list[Ratio] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # figures that are not ratios

    def add(self, ratio: Ratio) -> None:
        self.ratios.append(ratio)

    def render(self) -> str:
        rows = [
            [r.what, f"{r.gatekeeper:,.{_digits(r.gatekeeper)}f} {r.unit}", r.baseline_name,
             f"{r.baseline:,.{_digits(r.baseline)}f} {r.unit}", f"{r.ratio:.3f}x", r.verdict()]
            for r in self.ratios
        ]  # fmt: skip
        headers = ["figure", "gatekeeper", "baseline", "baseline figure", "ratio", "target"]
        out = [table(headers, rows)] if rows else []
        out += [f"  {line}" for line in self.lines]
        return "\n".join(out)


def _digits(value: float) -> int:
    return 0 if abs(value) >= 100 else 2


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join("  " + x.rstrip() for x in out)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    """The middle value (the lower one of an even count, like :func:`load.median_run`)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


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
