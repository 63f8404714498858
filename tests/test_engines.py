"""Several engines behind one gatekeeper (issue #11 §1): the pure part.

Which engine a generation goes to, why none can take one, the gate's per-engine
counts (never above an engine's own slots, released exactly once), and the config
that lists the engines, with its errors. The real processes are in
``test_engines_e2e.py``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from gatekeeper.config import ConfigError, load_config
from gatekeeper.core.admission import Gate, GateLimits, Rejection
from gatekeeper.core.engines import EngineSlots, no_engine_reason, pick_engine
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.lease import Lease
from gatekeeper.lifecycle.changes import diff
from gatekeeper.lifecycle.runtime import admission_limits

A, B, C = EngineSlots("a", 1), EngineSlots("b", 1), EngineSlots("c", 2)


@pytest.mark.parametrize(
    ("slots", "in_flight", "up", "picked"),
    [
        ((A, B), {}, {}, "a"),  # no probe answer yet is not "down"; the file's order
        ((A, B), {"a": 1}, {}, "b"),
        ((A, B), {"a": 1, "b": 1}, {}, None),
        ((A, B), {}, {"a": False}, "b"),  # a down engine gets no new job
        ((A, B), {}, {"a": False, "b": False}, None),
        ((A, B), {}, {"a": True, "b": None}, "a"),
        ((A, C), {"c": 1}, {}, "a"),  # least loaded by share of its own slots
        ((A, C), {"a": 1, "c": 1}, {}, "c"),  # c has a second slot
        ((A, C), {"a": 1, "c": 2}, {}, None),
        ((C, A), {}, {}, "c"),  # ties: the file's order
        ((A,), {"b": 3}, {}, "a"),  # a removed engine's jobs do not count against a
    ],
)
def test_pick_engine(
    slots: tuple[EngineSlots, ...],
    in_flight: dict[str, int],
    up: dict[str, bool | None],
    picked: str | None,
) -> None:
    """The engine a new generation goes to: up (or unknown), below its own slots, least
    loaded, then first in the file."""
    assert pick_engine(slots, in_flight, up) == picked


@pytest.mark.parametrize(
    ("in_flight", "up", "reason"),
    [
        ({"a": 1, "b": 1}, {}, "busy"),
        ({"a": 1}, {"b": False}, "busy"),  # the ETA of a's song is the honest wait
        ({}, {"a": False, "b": False}, "engine_down"),
        ({"a": 1}, {"a": False, "b": False}, "engine_down"),  # a's job is failing with it
    ],
)
def test_no_engine_reason(in_flight: dict[str, int], up: dict[str, bool], reason: str) -> None:
    """Why no engine can take a generation: busy if an engine that is up is full, else
    engine_down."""
    assert no_engine_reason((A, B), in_flight, up) == reason


def _gate(*slots: EngineSlots, down_retry_after: int = 5) -> Gate:
    total = sum(e.max_in_flight for e in slots)
    limits = GateLimits(total, 30, engines=slots, down_retry_after=down_retry_after)
    return Gate(limits, DurationEstimator(100.0))


def _ticket(result: Lease | Rejection) -> Lease:
    assert isinstance(result, Lease), result
    return result


def test_gate_spreads_over_engines_and_frees_the_engine_released() -> None:
    """Two one-slot engines: the first admit runs on a, the second on b, the third is
    busy (Retry-After from the running songs); releasing b's ticket frees b, not a."""
    gate = _gate(A, B)
    ta = _ticket(gate.try_admit("gen", 0.0))
    tb = _ticket(gate.try_admit("gen", 10.0))
    assert (ta.engine, tb.engine) == ("a", "b")
    third = gate.try_admit("gen", 40.0)
    assert third == Rejection("busy", 60)  # a's song: 100 s expected, 40 s elapsed
    assert tb.release() is True and tb.release() is False
    assert (gate.in_flight_on("a"), gate.in_flight_on("b"), gate.in_flight) == (1, 0, 1)
    assert _ticket(gate.try_admit("gen", 41.0)).engine == "b"


def test_gate_refuses_engine_down_with_the_probe_interval() -> None:
    """Every engine down: engine_down with Retry-After = the probe interval, nothing
    admitted; one engine coming back takes the next generation."""
    gate = _gate(A, B, down_retry_after=2)
    gate.engine_up.update(a=False, b=False)
    assert gate.try_admit("gen", 0.0) == Rejection("engine_down", 2)
    assert gate.reasons(0.0) == ["engine_down"]
    assert gate.in_flight == 0
    gate.engine_up["b"] = True
    assert _ticket(gate.try_admit("gen", 0.0)).engine == "b"


def test_draining_and_resources_come_before_engines() -> None:
    """Draining is the first reason even with every engine down; an engine down is a
    reason next to an overloaded resource, not instead of it."""
    gate = _gate(A)
    gate.engine_up["a"] = False
    gate.draining = True
    assert gate.reasons(0.0) == ["draining", "engine_down"]
    assert gate.check(0.0) == Rejection("draining", 30)


def test_a_removed_engine_keeps_its_job_and_gets_no_new_one() -> None:
    """A reload that removes engine a while it runs: a's ticket still counts and is
    released as usual; new generations go only to the engines still listed."""
    gate = _gate(A, B)
    ta = _ticket(gate.try_admit("gen", 0.0))
    assert ta.engine == "a"
    gate.limits = GateLimits(1, 30, engines=(B,))
    assert gate.in_flight == 1
    tb = _ticket(gate.try_admit("gen", 1.0))
    assert tb.engine == "b"
    assert gate.check(2.0) is not None  # b full, a not listed: nothing more
    ta.release()
    assert gate.in_flight_on("a") == 0 and gate.in_flight == 1
    assert gate.check(3.0) is not None  # a's freed slot is not a slot any more


def test_no_burst_ever_exceeds_an_engine_s_slots() -> None:
    """Property: random admits, releases, probe flips and reloads over three engines;
    after every step no engine runs more than its slots and the counts add up."""
    rng = random.Random(11)
    engines = (EngineSlots("a", 1), EngineSlots("b", 2), EngineSlots("c", 1))
    gate = _gate(*engines)
    held: list[Lease] = []
    for step in range(5000):
        roll = rng.random()
        if roll < 0.5:
            result = gate.try_admit("gen", float(step))
            if isinstance(result, Lease):
                held.append(result)
                # At the moment it is taken: a listed engine, not down, within its slots.
                slots = {e.name: e.max_in_flight for e in gate.limits.slots}
                assert result.engine in slots
                assert gate.engine_up.get(result.engine) is not False
                assert gate.in_flight_on(result.engine) <= slots[result.engine]
        elif roll < 0.8 and held:
            held.pop(rng.randrange(len(held))).release()
        elif roll < 0.9:
            gate.engine_up[rng.choice("abc")] = rng.choice((True, False, None))
        else:
            listed = tuple(e for e in engines if rng.random() < 0.8) or engines[:1]
            gate.limits = GateLimits(sum(e.max_in_flight for e in listed), 30, engines=listed)
        counted: dict[str, int] = {}
        for t in held:
            counted[t.engine] = counted.get(t.engine, 0) + 1
        assert {n: gate.in_flight_on(n) for n in "abc" if gate.in_flight_on(n)} == counted
        assert gate.in_flight == len(held)
    for t in held:
        t.release()
    assert gate.in_flight == 0


def test_admits_never_exceed_slots_when_nothing_is_reloaded() -> None:
    """1,000 admits in a row over engines of 1 and 2 slots: exactly 3 tickets, a:1 b:2."""
    gate = _gate(EngineSlots("a", 1), EngineSlots("b", 2))
    tickets = [r for r in (gate.try_admit("gen", 0.0) for _ in range(1000)) if isinstance(r, Lease)]
    assert sorted(t.engine for t in tickets) == ["a", "b", "b"]


# ---------------------------------------------------------------- config

TWO = """
upstream:
  engines:
    - {name: gpu0, url: "http://127.0.0.1:8001"}
    - {name: gpu1, url: "http://127.0.0.1:8002/", max_in_flight: 2}
"""


def test_engines_are_read_in_order_and_their_slots_add_up() -> None:
    """upstream.engines: names, URLs (no trailing '/'), slots (default 1); the total
    admission.max_in_flight is their sum and the gate's limits list them."""
    cfg = load_config(TWO)
    assert [(e.name, e.url, e.max_in_flight) for e in cfg.upstream.engines] == [
        ("gpu0", "http://127.0.0.1:8001", 1),
        ("gpu1", "http://127.0.0.1:8002", 2),
    ]
    assert cfg.admission.max_in_flight == 3
    assert cfg.upstream.url == "http://127.0.0.1:8001"
    limits = admission_limits(cfg)
    assert limits.slots == (
        EngineSlots("gpu0", 1, "http://127.0.0.1:8001"),
        EngineSlots("gpu1", 2, "http://127.0.0.1:8002"),
    )
    assert limits.down_retry_after == 5


def test_one_upstream_url_is_one_engine_named_default() -> None:
    """A single upstream.url stays valid: one engine, "default", with
    admission.max_in_flight slots."""
    cfg = load_config("upstream:\n  url: http://127.0.0.1:9000\nadmission:\n  max_in_flight: 2\n")
    (e,) = cfg.upstream.engines
    assert (e.name, e.url, e.max_in_flight) == ("default", "http://127.0.0.1:9000", 2)
    assert not cfg.upstream.listed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            TWO + "admission:\n  max_in_flight: 1\n",
            "line 7: admission.max_in_flight: cannot be set with upstream.engines",
        ),
        (
            TWO.replace("upstream:\n", "upstream:\n  url: http://127.0.0.1:1\n"),
            "line 3: upstream.url: cannot be set with upstream.engines",
        ),
        ("upstream:\n  engines: []\n", "line 2: upstream.engines: must be a non-empty list"),
        (
            "upstream:\n  engines:\n    - {name: a, url: 'http://h:1'}\n"
            "    - {name: a, url: 'http://h:2'}\n",
            "line 4: upstream.engines[1].name: duplicate engine name (got 'a')",
        ),
        (
            "upstream:\n  engines:\n    - {name: a, url: 'http://h:1'}\n"
            "    - {name: b, url: 'http://h:1/'}\n",
            "line 4: upstream.engines[1].url: is also engine 'a''s url",
        ),
        (
            "upstream:\n  engines:\n    - {name: GPU 0, url: 'http://h:1'}\n",
            "line 3: upstream.engines[0].name: must be 1-32 characters",
        ),
        (
            "upstream:\n  engines:\n    - {name: a}\n",
            "line 3: upstream.engines[0].url: is required",
        ),
        (
            "upstream:\n  engines:\n    - {name: a, url: 'ftp://h'}\n",
            "line 3: upstream.engines[0].url: must be an http:// or https:// URL",
        ),
        (
            "upstream:\n  engines:\n    - {name: a, url: 'http://h:1', max_in_flight: 0}\n",
            "line 3: upstream.engines[0].max_in_flight: must be >= 1 (got 0)",
        ),
        (
            "upstream:\n  engines:\n    - {name: a, url: 'http://h:1', max_in_fligth: 2}\n",
            "line 3: upstream.engines[0].max_in_fligth: unknown key; did you mean 'max_in_flight'?",
        ),
        (
            TWO + "routes:\n  - {name: ui, match: {path: '/**'}, action: gradio}\n",
            "line 7: routes[0].action: gradio needs exactly one engine",
        ),
    ],
)
def test_bad_engines_are_named_with_their_line(text: str, expected: str) -> None:
    """Every engines problem names its YAML path, line and value."""
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert expected in str(info.value), str(info.value)


def test_upstream_flag_cannot_replace_a_list_of_engines() -> None:
    """--upstream with upstream.engines in the file is an error, not a silent choice."""
    with pytest.raises(ConfigError, match=r"--upstream: cannot replace upstream\.engines"):
        load_config(TWO).with_overrides(upstream="http://127.0.0.1:9")


def test_upstream_flag_replaces_the_one_engine() -> None:
    """--upstream with a single upstream.url moves the one engine (pools follow it)."""
    cfg = load_config("upstream:\n  url: http://127.0.0.1:1\n").with_overrides(
        upstream="http://127.0.0.1:2"
    )
    assert [e.url for e in cfg.upstream.engines] == ["http://127.0.0.1:2"]


def _keys(old: str, new: str) -> list[tuple[str, Any, Any]]:
    return [(c.key, c.old, c.new) for c in diff(load_config(old), load_config(new))]


def test_reload_diff_names_engines_by_name() -> None:
    """A reload's changes name engines by name: added, removed, url or slots changed;
    the derived upstream.url and admission.max_in_flight are not reported."""
    new = (
        "upstream:\n  engines:\n"
        '    - {name: gpu1, url: "http://127.0.0.1:8002", max_in_flight: 1}\n'
        '    - {name: gpu2, url: "http://127.0.0.1:8003"}\n'
    )
    assert _keys(TWO, new) == [
        ("upstream.engines[gpu0]", "http://127.0.0.1:8001 (max_in_flight 1)", None),
        ("upstream.engines[gpu1].max_in_flight", 2, 1),
        ("upstream.engines[gpu2]", None, "http://127.0.0.1:8003 (max_in_flight 1)"),
    ]


def test_reload_diff_of_one_engine_is_unchanged() -> None:
    """One engine: a changed upstream.url or max_in_flight is reported as written."""
    old = "upstream:\n  url: http://127.0.0.1:1\n"
    new = "upstream:\n  url: http://127.0.0.1:2\nadmission:\n  max_in_flight: 2\n"
    assert _keys(old, new) == [
        ("upstream.url", "http://127.0.0.1:1", "http://127.0.0.1:2"),
        ("admission.max_in_flight", 1, 2),
    ]


def test_an_engine_with_more_slots_than_connections_is_a_warning() -> None:
    """An engine's max_in_flight above upstream.limits.max_connections is valid but would
    fail the extra generations with upstream_busy: `check` warns, naming the key."""
    from gatekeeper.observability.summary import config_warnings

    cfg = load_config(TWO.replace("max_in_flight: 2", "max_in_flight: 3"))
    (warning,) = config_warnings(cfg)
    assert warning.startswith(
        "upstream.engines[gpu1].max_in_flight (3) is more than upstream.limits.max_connections (2)"
    )
    assert config_warnings(load_config(TWO)) == []
    one = load_config("admission:\n  max_in_flight: 4\n")
    assert config_warnings(one)[0].startswith("admission.max_in_flight (4) is more than")
