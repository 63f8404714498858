"""Table tests of the pure per-request decision: one place answers "why was it refused?"."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support import ADMIT_ROUTES

from gatekeeper.config import Config, load_config
from gatekeeper.core.admission import Gate, GateLimits
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.plan import Forward, Refuse, ServeJobs, ServeStatus, plan
from gatekeeper.core.readings import ResourceState
from gatekeeper.core.routes import Router

BASE = "limits: {max_body_bytes: 1000}\nadmission: {retry_after_default: 30}\n"
CFG = load_config(BASE + ADMIT_ROUTES)  # /generate is an admit route
QCFG = load_config(BASE)  # the shipped routes: /generate is a queue route


def gate(*, busy: bool = False, cpu: bool = False, draining: bool = False) -> Gate:
    g = Gate(GateLimits(max_in_flight=1, retry_after_default=30), DurationEstimator(prior=60.0))
    if busy:
        g.try_admit("generate", 0.0)
    g.resources = replace(ResourceState(), cpu_overloaded=cpu)
    g.draining = draining
    return g


def decide(
    method: str, path: str, length: int | None = None, g: Gate | None = None, cfg: Config = CFG
):
    return plan(method, path, length, cfg, Router(cfg.routes), g or gate(), now=10.0)


@pytest.mark.parametrize(
    ("method", "path", "length", "g", "expected"),
    [
        ("GET", "/_gatekeeper/status", None, None, ServeStatus()),
        ("POST", "/_gatekeeper/status", None, None, ("forward", "default", False)),
        ("POST", "/batch-generate", None, None, ("refuse", 410, "blocked", "blocked")),
        ("POST", "/batch-generate", 10**9, None, ("refuse", 410, "blocked", "blocked")),
        ("POST", "/upload", 1001, None, ("refuse", 413, "body_too_large", "rejected")),
        ("POST", "/generate", 1001, None, ("refuse", 413, "body_too_large", "rejected")),
        ("GET", "/progress", None, gate(busy=True), ("forward", "default", False)),
        ("POST", "/generate", 1000, None, ("forward", "generate", True)),
        ("POST", "//generate/", None, None, ("forward", "generate", True)),
        ("POST", "/generate/stream", None, gate(busy=True), ("refuse", 503, "busy", "rejected")),
        ("POST", "/generate", None, gate(cpu=True), ("refuse", 503, "cpu", "rejected")),
        (
            "POST",
            "/generate",
            None,
            gate(busy=True, draining=True),
            ("refuse", 503, "draining", "rejected"),
        ),
    ],
)
def test_plan_table(
    method: str, path: str, length: int | None, g: Gate | None, expected: object
) -> None:
    """Status, block, 413, pass, reject and admit, in that order of precedence."""
    got = decide(method, path, length, g)
    assert shape(got) == expected


def shape(got: object) -> object:
    if isinstance(got, Refuse):
        return ("refuse", got.status, got.reason, got.outcome)
    if isinstance(got, Forward):
        flags = (("queued",) if got.queued else ()) + (("batch",) if got.batch else ())
        return ("forward", got.route.name, got.gated, *flags)
    return got


@pytest.mark.parametrize(
    ("method", "path", "length", "g", "expected"),
    [
        ("GET", "/_gatekeeper/jobs/abc", None, None, ServeJobs("/abc")),
        ("DELETE", "/_gatekeeper/jobs/abc", None, None, ServeJobs("/abc")),
        ("GET", "/_gatekeeper/jobs", None, None, ServeJobs("")),
        ("GET", "/_gatekeeper/jobsx", None, None, ("forward", "default", False)),
        ("POST", "/generate", None, None, ("forward", "generate", True, "queued")),
        # No free slot or high CPU: the waiting room decides after the body, not plan.
        ("POST", "/generate", None, gate(busy=True), ("forward", "generate", True, "queued")),
        ("POST", "/generate/stream", None, gate(cpu=True), ("forward", "generate", True, "queued")),
        ("POST", "/generate", None, gate(draining=True), ("refuse", 503, "draining", "rejected")),
        ("POST", "/generate", 1001, None, ("refuse", 413, "body_too_large", "rejected")),
        ("POST", "/batch-generate", None, None, ("forward", "batch-generate", True, "batch")),
        ("POST", "/batch-generate", 1001, None, ("refuse", 413, "body_too_large", "rejected")),
        (
            "POST",
            "/batch-generate",
            None,
            gate(draining=True),
            ("refuse", 503, "draining", "rejected"),
        ),
    ],
)
def test_plan_table_with_the_waiting_room(
    method: str, path: str, length: int | None, g: Gate | None, expected: object
) -> None:
    """The shipped routes: jobs endpoints, queue routes forwarded to the waiting room,
    except while draining (a wait would outlive the process)."""
    assert shape(decide(method, path, length, g, QCFG)) == expected


def test_a_rejection_carries_an_honest_retry_after() -> None:
    """Busy: Retry-After is the running generation's expected time left, not a constant."""
    got = decide("POST", "/generate", None, gate(busy=True))
    assert isinstance(got, Refuse) and got.retry_after == 50  # 60 s expected, 10 s elapsed


def test_413_closes_the_connection_and_names_the_key() -> None:
    """An oversized declared body is refused before reading, and the connection closes."""
    got = decide("POST", "/generate", 5000)
    assert isinstance(got, Refuse) and got.close
    assert got.detail is not None and "limits.max_body_bytes (1000)" in got.detail


def test_plan_takes_no_slot() -> None:
    """Deciding is free of side effects: planning an admit leaves the gate untouched."""
    g = gate()
    for _ in range(3):
        assert isinstance(decide("POST", "/generate", None, g), Forward)
    assert g.in_flight == 0
