"""``admission``: how many generations run at once, resource thresholds, Retry-After."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .reader import Section


@dataclass(frozen=True)
class Threshold:
    reject_above: float
    recover_below: float


@dataclass(frozen=True)
class Resources:
    source: Literal["psutil", "file"] = "psutil"
    file: str | None = None
    cpu_smoothing: float = 0.5
    cpu_percent: Threshold = Threshold(90.0, 75.0)
    memory_percent: Threshold = Threshold(90.0, 80.0)


@dataclass(frozen=True)
class Admission:
    max_in_flight: int = 1
    sample_interval: float = 1.0
    reject_status: int = 503
    retry_after_default: int = 30
    on_client_disconnect: Literal["finish", "cancel"] = "finish"
    expected_seconds: float = 600.0
    resources: Resources = field(default_factory=Resources)


def _threshold(sec: Section, default: Threshold) -> Threshold:
    t = Threshold(
        reject_above=sec.number("reject_above", default.reject_above, maximum=100),
        recover_below=sec.number("recover_below", default.recover_below, maximum=100),
    )
    if t.recover_below > t.reject_above:
        sec.problem(
            "recover_below",
            sec.node_of("recover_below"),
            f"must be <= reject_above ({t.reject_above:g}) for hysteresis",
            t.recover_below,
        )
    sec.close()
    return t


def _resources(rs: Section) -> Resources:
    d = Resources()
    source = rs.string("source", d.source, choices=("psutil", "file"))
    file = rs.get(
        "file",
        d.file,
        lambda v: None if isinstance(v, str) and v else "must be a path",
        allow_none=True,
    )
    if source == "file" and not file:
        rs.problem("file", rs.node_of("file"), "is required when source is 'file'")
    resources = Resources(
        source=source,  # type: ignore[arg-type]
        file=file,
        cpu_smoothing=rs.number("cpu_smoothing", d.cpu_smoothing, maximum=1.0, exclusive_min=True),
        cpu_percent=_threshold(rs.section("cpu_percent"), d.cpu_percent),
        memory_percent=_threshold(rs.section("memory_percent"), d.memory_percent),
    )
    rs.close()
    return resources


def read_admission(sec: Section) -> Admission:
    d = Admission()
    resources = _resources(sec.section("resources"))

    def at_least_one(v: object) -> str | None:
        # 0 would turn every generation away with "busy", which reads like an engine
        # fault; a deliberate stop is a block route (or draining), which says so.
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer"
        if v < 1:
            return (
                "must be >= 1 (0 would reject every generation as busy;"
                " to stop generations on purpose, use a block route)"
            )
        return None

    a = Admission(
        max_in_flight=sec.get("max_in_flight", d.max_in_flight, at_least_one),
        sample_interval=sec.duration("sample_interval", d.sample_interval),
        reject_status=sec.integer("reject_status", d.reject_status, minimum=400, maximum=599),
        retry_after_default=sec.integer("retry_after_default", d.retry_after_default, minimum=1),
        on_client_disconnect=sec.string(  # type: ignore[arg-type]
            "on_client_disconnect", d.on_client_disconnect, choices=("finish", "cancel")
        ),
        expected_seconds=sec.duration("expected_seconds", d.expected_seconds),
        resources=resources,
    )
    sec.close()
    return a
