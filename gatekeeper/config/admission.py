"""``admission``: how many generations run at once, resource thresholds, Retry-After,
and the waiting room of ``queue`` routes (``admission.queue``, issue #9)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from gatekeeper.config.reader import Section, value_of


@dataclass(frozen=True)
class Threshold:
    reject_above: float
    recover_below: float


@dataclass(frozen=True)
class PressureThreshold(Threshold):
    """A PSI threshold (issue #11 §3): which ``avg10`` line of the pressure file counts.

    The key is ``line``, not ``on``: YAML 1.1 (PyYAML) reads a bare ``on:`` as ``True:``.
    """

    line: Literal["some", "full"] = "some"


# Which PSI line counts when ``line`` is not given. cpu: "some" (a runnable task waited for
# a CPU); "full" is not defined for the system-wide cpu file (the kernel reports 0 or
# nothing). memory and io: "full" (every non-idle task stalled at once: thrashing, the
# freeze itself); "some" trips on one task doing reclaim or a single slow read.
PSI_DEFAULT_LINE: dict[str, Literal["some", "full"]] = {
    "cpu": "some",
    "memory": "full",
    "io": "full",
}


@dataclass(frozen=True)
class Gpu:
    """NVML readings (the ``gpu`` extra): which devices, and optional thresholds."""

    # Device indices to watch; None: every device NVML sees; (): GPU sampling off.
    devices: tuple[int, ...] | None = None
    memory_percent: Threshold | None = None
    utilization_percent: Threshold | None = None


@dataclass(frozen=True)
class Resources:
    source: Literal["psutil", "file"] = "psutil"
    file: str | None = None
    cpu_smoothing: float = 0.5
    cpu_percent: Threshold = Threshold(90.0, 75.0)
    memory_percent: Threshold = Threshold(90.0, 80.0)
    # "auto": gatekeeper's own cgroup (when it has a limit); "none": host-wide only;
    # "/system.slice/songgen.service": that cgroup (the engine's), under /sys/fs/cgroup.
    cgroup: str = "auto"
    # PSI thresholds on avg10 (percent of time stalled); None: not a reason to reject.
    cpu_pressure: PressureThreshold | None = None
    memory_pressure: PressureThreshold | None = None
    io_pressure: PressureThreshold | None = None
    gpu: Gpu = Gpu()


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


@dataclass(frozen=True)
class Queue:
    """Bounds of the waiting room shared by every ``queue`` route."""

    # Jobs waiting at once (all queue routes); 0 = no waiting: a queue route then only
    # admits or refuses queue_full, never waits.
    max_waiting: int = 20
    # A waiter's own timer, started at arrival (independent of slots and upstream timeouts).
    max_wait: float = 1800.0
    # Waiting + running jobs of one client key; over it -> 429 client_limit.
    per_client: int = 2
    client_key: ClientKey = ClientKey()
    # Peers whose X-Forwarded-For is believed when deriving the remote client key.
    trusted_proxies: tuple[Network, ...] = ()


@dataclass(frozen=True)
class Admission:
    max_in_flight: int = 1
    sample_interval: float = 1.0
    reject_status: int = 503
    retry_after_default: int = 30
    on_client_disconnect: Literal["finish", "cancel"] = "finish"
    expected_seconds: float = 600.0
    resources: Resources = field(default_factory=Resources)
    queue: Queue = field(default_factory=Queue)


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


def _optional_threshold(parent: Section, key: str, psi: str | None = None) -> Threshold | None:
    """An opt-in threshold: absent or null = not a reason to reject. ``reject_above`` is
    required; ``recover_below`` defaults to it (no hysteresis band beyond the reading's
    own averaging); ``line`` (PSI only) picks the avg10 line: some or full."""
    node = parent.node_of(key)
    if node is None or (isinstance(node, yaml.ScalarNode) and value_of(node) is None):
        return None
    sec = parent.section(key)
    if sec.node is None:  # not a mapping: already reported
        return None
    if not sec.has("reject_above"):
        sec.problem("reject_above", None, "is required, e.g. reject_above: 20")
    reject = sec.number("reject_above", 100.0, maximum=100)
    recover = sec.number("recover_below", reject, maximum=100)
    line = PSI_DEFAULT_LINE.get(psi or "", "some")
    if psi is not None:
        line = sec.string("line", line, choices=("some", "full"))  # type: ignore[assignment]
    if recover > reject:
        sec.problem(
            "recover_below",
            sec.node_of("recover_below"),
            f"must be <= reject_above ({reject:g}) for hysteresis",
            recover,
        )
    sec.close()
    if psi is None:
        return Threshold(reject_above=reject, recover_below=recover)
    return PressureThreshold(reject_above=reject, recover_below=recover, line=line)


def _pressure(rs: Section, psi: str) -> PressureThreshold | None:
    t = _optional_threshold(rs, f"{psi}_pressure", psi)
    assert t is None or isinstance(t, PressureThreshold)
    return t


def _check_cgroup(v: Any) -> str | None:
    if v is False or v in ("auto", "none"):
        return None
    if isinstance(v, str) and v.startswith("/") and ".." not in v.split("/"):
        return None
    return (
        "must be auto (gatekeeper's own cgroup), none (host-wide readings) or a cgroup"
        " path under /sys/fs/cgroup, e.g. /system.slice/songgen.service"
    )


def _gpu_devices(gs: Section) -> tuple[int, ...] | None:
    node = gs.node_of("devices")
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
        "devices",
        node,
        "must be all, or a list of device indices such as [0, 1] ([] turns GPU sampling off)",
        value,
    )
    return None


def _gpu(gs: Section) -> Gpu:
    gpu = Gpu(
        devices=_gpu_devices(gs),
        memory_percent=_optional_threshold(gs, "memory_percent"),
        utilization_percent=_optional_threshold(gs, "utilization_percent"),
    )
    gs.close()
    return gpu


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
        cgroup=_cgroup_name(rs.get("cgroup", d.cgroup, _check_cgroup, allow_none=True)),
        cpu_pressure=_pressure(rs, "cpu"),
        memory_pressure=_pressure(rs, "memory"),
        io_pressure=_pressure(rs, "io"),
        gpu=_gpu(rs.section("gpu")),
    )
    rs.close()
    return resources


def _cgroup_name(v: str | bool | None) -> str:
    """``null`` is auto; YAML ``false`` is none; a path loses a trailing slash."""
    if v is None:
        return "auto"
    if v is False:
        return "none"
    assert isinstance(v, str)
    return v if v in ("auto", "none", "/") else v.rstrip("/")


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


def _trusted_proxies(qs: Section) -> tuple[Network, ...]:
    node = qs.node_of("trusted_proxies")
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


def _queue(qs: Section) -> Queue:
    d = Queue()
    q = Queue(
        max_waiting=qs.integer("max_waiting", d.max_waiting, minimum=0),
        max_wait=qs.duration("max_wait", d.max_wait),
        per_client=qs.integer("per_client", d.per_client, minimum=1),
        client_key=parse_client_key(
            qs.get("client_key", d.client_key.describe(), _check_client_key)
        ),
        trusted_proxies=_trusted_proxies(qs),
    )
    qs.close()
    return q


def read_admission(sec: Section) -> Admission:
    d = Admission()
    resources = _resources(sec.section("resources"))
    queue = _queue(sec.section("queue"))

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
        queue=queue,
    )
    sec.close()
    return a
