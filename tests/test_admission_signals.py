"""The opt-in signals in the pure admission core: hysteresis per signal, reason order."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gatekeeper.config import Gpu, PressureThreshold, Resources, Threshold
from gatekeeper.core.admission import GateLimits, Rejection, decide, reasons
from gatekeeper.core.readings import Readings, ResourceState
from gatekeeper.core.vocab import ADMIT_REASONS, RESOURCE_REASONS, AdmitReason

ALL = Resources(
    cpu_pressure=PressureThreshold(50, 30, "some"),
    memory_pressure=PressureThreshold(10, 2, "full"),
    io_pressure=PressureThreshold(40, 20, "full"),
    gpu=Gpu(memory_percent=Threshold(95, 85), utilization_percent=Threshold(99, 90)),
)
CALM = Readings(10, 10, 0.0, 0.0, 0.0, 10.0, 10.0)


@pytest.mark.parametrize(
    ("field", "flag", "series", "expected"),
    [
        (
            "memory_pressure",
            "memory_pressure_overloaded",
            [0.5, 10.0, 10.5, 5.0, 2.0, 1.9],
            [False, False, True, True, True, False],  # > 10 trips; < 2 clears
        ),
        (
            "cpu_pressure",
            "cpu_pressure_overloaded",
            [20, 51, 30, 29],
            [False, True, True, False],
        ),
        ("io_pressure", "io_pressure_overloaded", [41, 25, 19], [True, True, False]),
        (
            "gpu_memory_percent",
            "gpu_memory_overloaded",
            [90, 96, 86, 84],
            [False, True, True, False],
        ),
        (
            "gpu_utilization_percent",
            "gpu_utilization_overloaded",
            [100, 95, 89],
            [True, True, False],
        ),
    ],
)
def test_each_signal_walks_its_own_hysteresis(
    field: str, flag: str, series: list[float], expected: list[bool]
) -> None:
    """Every opt-in signal trips above reject_above and clears below recover_below."""
    st = ResourceState()
    seen = []
    for v in series:
        st = st.advance(replace(CALM, **{field: v}), ALL, now=1.0)
        seen.append(getattr(st, flag))
        assert getattr(st, field) == v
    assert seen == expected


def test_absent_reading_or_no_threshold_never_rejects() -> None:
    """A reading of None (signal absent) or a signal without threshold is never overloaded,
    even after it was: an absent signal must not hold the gate shut."""
    st = ResourceState().advance(replace(CALM, memory_pressure=50.0), ALL, now=0)
    assert st.memory_pressure_overloaded
    st = st.advance(replace(CALM, memory_pressure=None), ALL, now=1)
    assert not st.memory_pressure_overloaded and st.memory_pressure is None
    st = st.advance(Readings(10, 10, 99, 99, 99, 99, 100), Resources(), now=2)
    assert st.overloaded() == dict.fromkeys(RESOURCE_REASONS, False)


def test_cpu_and_memory_still_use_their_thresholds() -> None:
    """cpu_percent and memory_percent keep their thresholds beside the new ones."""
    st = ResourceState().advance(Readings(95, 95), Resources(), now=0)
    assert (st.cpu_overloaded, st.memory_overloaded) == (True, True)
    assert st.sampled_at == 0


def test_reasons_follow_the_documented_order() -> None:
    """Every resource reason at once: cpu, memory, then PSI cpu/memory/io, then GPU."""
    hot = ResourceState(**{f"{r.value}_overloaded": True for r in RESOURCE_REASONS})
    got = reasons(in_flight=1, limits=GateLimits(1, 30), resources=hot, draining=True)
    assert got == [
        "draining",
        "busy",
        "cpu",
        "memory",
        "cpu_pressure",
        "memory_pressure",
        "io_pressure",
        "gpu_memory",
        "gpu_utilization",
    ]


@pytest.mark.parametrize("reason", RESOURCE_REASONS[2:])
def test_each_new_reason_is_a_rejection(reason: AdmitReason) -> None:
    """An overloaded opt-in signal alone rejects with its own reason code."""
    st = ResourceState(**{f"{reason.value}_overloaded": True})
    got = decide(
        in_flight=0,
        limits=GateLimits(1, 30),
        resources=st,
        draining=False,
        expected=600,
        running_elapsed=[],
    )
    assert got == Rejection(reason, 30)


def test_reason_tuples_agree() -> None:
    """Every resource reason is primed as a rejection label, and has a default message."""
    from gatekeeper.config import DEFAULT_MESSAGES, REASONS

    assert set(RESOURCE_REASONS) <= set(ADMIT_REASONS)
    assert set(AdmitReason) == set(ADMIT_REASONS)
    for r in AdmitReason:
        assert r in REASONS and r in DEFAULT_MESSAGES


def test_message_fields_read_absent_as_zero() -> None:
    """A rejection message may quote any reading; an absent one renders as 0."""
    f = ResourceState(cpu_percent=50, memory_pressure=12.5).message_fields()
    assert f["cpu_percent"] == 50 and f["memory_pressure"] == 12.5 and f["io_pressure"] == 0.0
    assert set(f) == {
        "cpu_percent",
        "memory_percent",
        "cpu_pressure",
        "memory_pressure",
        "io_pressure",
        "gpu_memory_percent",
        "gpu_utilization_percent",
    }
