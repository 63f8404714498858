"""The PostgreSQL store's circuit breaker (pure, an injected clock; ``jobs.postgres.breaker``)."""

from __future__ import annotations

from gatekeeper.jobs.postgres.breaker import Breaker


def test_one_failure_opens_it_and_only_a_probe_closes_it() -> None:
    """A failure opens the breaker (calls refused); a failed probe keeps it open; a good
    probe closes it; the first failure's cause is what it reports."""
    b = Breaker(lambda: 10.0, probe_every=1.0)
    assert b.allow() and not b.is_open and b.why == ""
    b.failed("no answer within 1s")
    b.failed("ConnectionResetError")
    assert not b.allow() and b.why == "no answer within 1s" and b.opened_total == 1
    b.probed(False)
    assert not b.allow()
    b.probed(True)
    assert b.allow() and b.why == ""
    b.failed("again")
    assert b.opened_total == 2


def test_retry_after_is_the_probe_interval_in_whole_seconds() -> None:
    """A refused caller is told to come back after the next probe, at least 1 s."""
    assert Breaker(lambda: 0.0, probe_every=0.2).retry_after() == 1
    assert Breaker(lambda: 0.0, probe_every=2.5).retry_after() == 3
