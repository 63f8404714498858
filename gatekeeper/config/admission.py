"""``admission``: how many generations run at once, resource thresholds, Retry-After,
and the waiting room of ``queue`` routes (``admission.queue``, issue #9)."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import yaml

from gatekeeper.config.build import read_section, section_check
from gatekeeper.config.declare import (
    JSON,
    checked,
    custom,
    declared,
    duration,
    integer,
    number,
    section,
    string,
)
from gatekeeper.config.reader import Context, Section, value_of


@declared
class Threshold:
    """Hysteresis: over ``reject_above`` generations are rejected until the reading falls
    under ``recover_below``."""

    reject_above: float = number("Reject generations over this reading.", maximum=100)
    recover_below: float = number(
        "Admit again under this reading (<= reject_above). In an opt-in threshold it"
        " defaults to reject_above.",
        maximum=100,
    )


@declared
class PressureThreshold(Threshold):
    """A PSI threshold (issue #11 §3): which ``avg10`` line of the pressure file counts.

    The key is ``line``, not ``on``: YAML 1.1 (PyYAML) reads a bare ``on:`` as ``True:``.
    """

    line: Literal["some", "full"] = string(
        "some: at least one task stalled; full: every non-idle task stalled at once."
        " Default: some for cpu, full for memory and io.",
        choices=("some", "full"),
        default="some",
    )


# Which PSI line counts when ``line`` is not given. cpu: "some" (a runnable task waited for
# a CPU); "full" is not defined for the system-wide cpu file (the kernel reports 0 or
# nothing). memory and io: "full" (every non-idle task stalled at once: thrashing, the
# freeze itself); "some" trips on one task doing reclaim or a single slow read.
PSI_DEFAULT_LINE: dict[str, Literal["some", "full"]] = {
    "cpu": "some",
    "memory": "full",
    "io": "full",
}


@section_check(Threshold)
def _hysteresis(t: Threshold, sec: Section, ctx: Context) -> Threshold:
    if math.isnan(t.recover_below):  # an opt-in threshold without recover_below
        t = replace(t, recover_below=t.reject_above)
    if t.recover_below > t.reject_above:
        sec.problem(
            "recover_below",
            sec.node_of("recover_below"),
            f"must be <= reject_above ({t.reject_above:g}) for hysteresis",
            t.recover_below,
        )
    return t


def _opt_in(base: Threshold) -> Callable[[Section, str, Any, Context, Any], Threshold | None]:
    """An opt-in threshold: absent or null = not a reason to reject. ``reject_above`` is
    required; ``recover_below`` defaults to it (no hysteresis band beyond the reading's
    own averaging); a PSI one has ``line`` too (its default: ``base.line``)."""

    def read(parent: Section, key: str, default: Any, ctx: Context, done: Any) -> Threshold | None:
        node = parent.node_of(key)
        if node is None or (isinstance(node, yaml.ScalarNode) and value_of(node) is None):
            return None
        sec = parent.section(key)
        if sec.node is None:  # not a mapping: already reported
            return None
        if not sec.has("reject_above"):
            sec.problem("reject_above", None, "is required, e.g. reject_above: 20")
        return read_section(type(base), sec, ctx, base)

    return read


def _opt_in_threshold(doc: str, psi: str | None = None) -> Any:
    base = Threshold(100.0, math.nan)
    if psi is not None:
        base = PressureThreshold(100.0, math.nan, line=PSI_DEFAULT_LINE[psi])
    schema: JSON = {"type": ["object", "null"], "required": ["reject_above"]}
    return custom(doc, read=_opt_in(base), schema=schema, shape=type(base), default=None)


def _gpu_devices(
    gs: Section, key: str, default: Any, ctx: Context, done: Any
) -> tuple[int, ...] | None:
    node = gs.node_of(key)
    if node is None:
        return None
    value = value_of(node)
    if value in (None, "all"):
        return None
    if isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        return tuple(dict.fromkeys(value))
    gs.problem(
        key,
        node,
        "must be all, or a list of device indices such as [0, 1] ([] turns GPU sampling off)",
        value,
    )
    return None


@declared
class Gpu:
    """NVML readings (the ``gpu`` extra): which devices, and optional thresholds."""

    devices: tuple[int, ...] | None = custom(
        "Devices to watch: all (null), a list of indices such as [0, 1], or [] (GPU sampling off).",
        read=_gpu_devices,
        schema={
            "anyOf": [
                {"const": "all"},
                {"type": "null"},
                {"type": "array", "items": {"type": "integer", "minimum": 0}},
            ]
        },
        default=None,
    )
    memory_percent: Threshold | None = _opt_in_threshold(
        "GPU memory threshold on the busiest watched device; null: not a reason to reject."
    )
    utilization_percent: Threshold | None = _opt_in_threshold(
        "GPU utilisation threshold on the busiest watched device; null: not a reason to reject."
    )


def _check_cgroup(v: Any) -> str | None:
    if v is None or v is False or v in ("auto", "none"):  # null: auto
        return None
    if isinstance(v, str) and v.startswith("/") and ".." not in v.split("/"):
        return None
    return (
        "must be auto (gatekeeper's own cgroup), none (host-wide readings) or a cgroup"
        " path under /sys/fs/cgroup, e.g. /system.slice/songgen.service"
    )


def _cgroup_name(v: str | bool | None) -> str:
    """``null`` is auto; YAML ``false`` is none; a path loses a trailing slash."""
    if v is None:
        return "auto"
    if v is False:
        return "none"
    assert isinstance(v, str)
    return v if v in ("auto", "none", "/") else v.rstrip("/")


_PRESSURE_DOC = (
    "PSI threshold on avg10 (percent of time stalled), e.g. {reject_above: 10,"
    " recover_below: 2}; null: read and reported, never a reason to reject."
)


@declared
class Resources:
    source: Literal["psutil", "file"] = string(
        "psutil: readings of this machine (psutil, cgroup v2, PSI, NVML); file: readings"
        " from a JSON file, re-read every sample_interval (fire drills and tests).",
        choices=("psutil", "file"),
        default="psutil",
    )
    file: str | None = checked(
        "Path of the readings file when source is file.",
        lambda v: None if isinstance(v, str) and v else "must be a path",
        {"type": "string", "minLength": 1},
        allow_none=True,
        default=None,
    )
    cpu_smoothing: float = number(
        "Weight of the newest CPU sample in its moving average (1 = no smoothing; psutil only).",
        maximum=1.0,
        exclusive_min=True,
        default=0.5,
    )
    cpu_percent: Threshold = section(
        "CPU % thresholds.", factory=lambda: Threshold(90.0, 75.0), shape=Threshold
    )
    memory_percent: Threshold = section(
        "Memory % thresholds.", factory=lambda: Threshold(90.0, 80.0), shape=Threshold
    )
    cgroup: str = checked(
        "auto: gatekeeper's own cgroup (when it has a limit); none: host-wide only; or a"
        " cgroup path under /sys/fs/cgroup, e.g. /system.slice/songgen.service (the engine's).",
        _check_cgroup,
        {
            "anyOf": [
                {"enum": ["auto", "none", False, None]},
                {"type": "string", "pattern": "^(?!.*(?:^|/)\\.\\.(?:/|$))/"},
            ]
        },
        convert=_cgroup_name,
        default="auto",
    )
    cpu_pressure: PressureThreshold | None = _opt_in_threshold(_PRESSURE_DOC, "cpu")
    memory_pressure: PressureThreshold | None = _opt_in_threshold(_PRESSURE_DOC, "memory")
    io_pressure: PressureThreshold | None = _opt_in_threshold(_PRESSURE_DOC, "io")
    gpu: Gpu = section("NVIDIA GPUs through NVML (pip install 'gatekeeper[gpu]').", factory=Gpu)


@section_check(Resources)
def _check_resources(rs: Resources, sec: Section, ctx: Context) -> Resources:
    if rs.source == "file" and not rs.file:
        sec.problem("file", sec.node_of("file"), "is required when source is 'file'")
    return rs


# RFC 9110 section 5.1: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ClientKey:
    """Whose turn it is: the peer address, or a header the frontend sets (a user id)."""

    source: Literal["remote", "header"] = "remote"
    header: str | None = None  # the header name when source == "header"

    def describe(self) -> str:
        """The YAML spelling: ``remote`` or ``header:X-User-Id``."""
        return f"header:{self.header}" if self.source == "header" else "remote"


def _check_client_key(v: Any) -> str | None:
    if isinstance(v, str):
        if v == "remote":
            return None
        kind, sep, name = v.partition(":")
        if kind == "header" and sep and _TOKEN.match(name):
            return None
    return "must be 'remote' or 'header:<Name>' with a header name, e.g. header:X-User-Id"


def parse_client_key(v: str) -> ClientKey:
    """``remote`` or ``header:<Name>`` (already checked by ``_check_client_key``)."""
    if v == "remote":
        return ClientKey()
    return ClientKey(source="header", header=v.partition(":")[2])


def _trusted_proxies(
    qs: Section, key: str, default: Any, ctx: Context, done: Any
) -> tuple[Network, ...]:
    node = qs.node_of(key)
    if node is None or (isinstance(node, yaml.ScalarNode) and value_of(node) is None):
        return ()
    if not isinstance(node, yaml.SequenceNode):
        qs.problem(
            "trusted_proxies",
            node,
            "must be a list of addresses or CIDRs, e.g. [127.0.0.1, 10.0.0.0/8]",
            value_of(node),
        )
        return ()
    nets: list[Network] = []
    for i, item in enumerate(node.value):
        value = value_of(item)
        try:
            if not isinstance(value, str):
                raise ValueError("not a string")
            # strict: 10.0.0.1/8 is a typo for 10.0.0.0/8 or 10.0.0.1, not a guess to make
            nets.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            qs.problem(
                f"trusted_proxies[{i}]",
                item,
                f"must be an IP address or CIDR, e.g. 10.0.0.0/8 ({exc})",
                value,
            )
    return tuple(nets)


@declared
class Queue:
    """Bounds of the waiting room shared by every ``queue`` route."""

    max_waiting: int = integer(
        "Jobs waiting at once (all queue routes); full: 503 queue_full. 0: no waiting (a queue"
        " route then only admits or refuses queue_full).",
        minimum=0,
        default=20,
    )
    max_wait: float = duration(
        "A waiter's own timer, started at arrival (independent of slots and upstream"
        " timeouts); over it: 503 queue_timeout.",
        default=1800.0,
    )
    per_client: int = integer(
        "Waiting + running jobs of one client key; over it: 429 client_limit.", minimum=1, default=2
    )
    client_key: ClientKey = checked(
        "Who a client is (per_client and fairness): remote (the peer address) or"
        " header:<Name>, a header the frontend sets, e.g. header:X-User-Id.",
        _check_client_key,
        {"type": "string", "pattern": "^(remote|header:[!#$%&'*+\\-.^_`|~0-9A-Za-z]+)$"},
        convert=parse_client_key,
        default=ClientKey(),
    )
    trusted_proxies: tuple[Network, ...] = custom(
        "Peers (addresses or CIDRs, e.g. [127.0.0.1, 10.0.0.0/8]) whose X-Forwarded-For is"
        " believed when deriving the remote client key. []: X-Forwarded-For is ignored.",
        read=_trusted_proxies,
        schema={"type": ["array", "null"], "items": {"type": "string"}},
        default=(),
    )


def _at_least_one(v: object) -> str | None:
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


@declared
class Admission:
    max_in_flight: int = checked(
        "Generations allowed to run at once (the engine takes the whole machine: 1). With"
        " upstream.engines it must not be set: each engine has its own max_in_flight.",
        _at_least_one,
        {"type": "integer", "minimum": 1},
        default=1,
    )
    sample_interval: float = duration(
        "How often CPU, memory, PSI and GPU are sampled (never on the request path).", default=1.0
    )
    reject_status: int = integer(
        "Status code of a rejection (busy, engine_down, cpu, ...).",
        minimum=400,
        maximum=599,
        default=503,
    )
    retry_after_default: int = integer(
        "Retry-After (seconds) when no running generation gives a better estimate.",
        minimum=1,
        default=30,
    )
    on_client_disconnect: Literal["finish", "cancel"] = string(
        "A client that leaves mid-generation: finish keeps reading the engine's answer and"
        " holds the slot until the engine is done; cancel closes the engine connection and"
        " frees the slot at once.",
        choices=("finish", "cancel"),
        default="finish",
    )
    expected_seconds: float = duration(
        "Initial estimate of one generation's duration, then learnt from completed ones"
        " (median of the last 20). Drives Retry-After.",
        default=600.0,
    )
    resources: Resources = section("Resource readings and their thresholds.", factory=Resources)
    queue: Queue = section(
        "The waiting room of queue routes: a generation that finds no free slot waits its turn"
        " instead of getting 503 busy.",
        factory=Queue,
    )
