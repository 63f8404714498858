"""Webhooks, the pure pieces (issue #20 §1): the allowlist, the event filter, the backoff
schedule, the outcome of an answer, the signature (checked with the reference library)."""

from __future__ import annotations

import base64
import json

import pytest
from standardwebhooks import Webhook

from gatekeeper.config import load_config
from gatekeeper.config.errors import ConfigError
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.webhooks import openapi_fragment
from gatekeeper.jobs.webhooks.allow import allowed
from gatekeeper.jobs.webhooks.emit import targets
from gatekeeper.jobs.webhooks.payload import body
from gatekeeper.jobs.webhooks.policy import (
    BACKOFF_CAP,
    Outcome,
    backoff,
    classify,
    parse_events,
    progress_due,
)
from gatekeeper.jobs.webhooks.request import WebhookRefused, decide
from gatekeeper.jobs.webhooks.sign import SecretError, decode_secret, headers

PREFIXES = ("https://hooks.example.com/gk/", "http://127.0.0.1:9000/in")
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/gk/", True),
        ("https://hooks.example.com/gk/songs/1", True),
        ("https://HOOKS.example.com/gk/x", True),  # host case-insensitive
        ("https://hooks.example.com:443/gk/x", True),  # the default port, spelled out
        ("https://hooks.example.com./gk/x", True),  # the root dot of a FQDN
        ("http://127.0.0.1:9000/in", True),  # the prefix itself, without a trailing '/'
        ("http://127.0.0.1:9000/in/a?x=1", True),
        ("https://hooks.example.com/gk", False),  # above the prefix
        ("https://hooks.example.com/gkx/", False),  # not at a '/' boundary
        ("http://127.0.0.1:9000/inside", False),  # not at a '/' boundary
        ("https://hooks.example.com/GK/x", False),  # the path is case-sensitive
        ("http://hooks.example.com/gk/x", False),  # another scheme
        ("https://hooks.example.com:8443/gk/x", False),  # another port
        ("https://hooks.example.com.evil.net/gk/x", False),  # another host
        ("https://evil.net/hooks.example.com/gk/x", False),
        ("https://hooks.example.com@evil.net/gk/x", False),  # userinfo trick
        ("https://user:pw@hooks.example.com/gk/x", False),  # any userinfo
        ("https://hooks.example.com/gk/../admin", False),  # dot segments
        ("https://hooks.example.com/gk/%2e%2e/admin", False),  # encoded dots
        ("https://hooks.example.com/gk%2F..%2Fadmin", False),  # encoded slash
        ("https://hooks.example.com\\@evil.net/gk/", False),  # backslash
        ("https://hooks.example.com/gk/#frag", False),
        ("https://hooks.example.com/gk/ x", False),
        ("ftp://hooks.example.com/gk/", False),
        ("//hooks.example.com/gk/", False),
        ("/gk/", False),
        ("http://127.0.0.1:99999/in", False),  # a port out of range
        ("", False),
    ],
)
def test_allowlist(url: str, ok: bool) -> None:
    """A URL passes only under a prefix by scheme, host, port and a path at a '/' boundary."""
    assert allowed(url, PREFIXES) is ok


def test_empty_allowlist_allows_nothing() -> None:
    """With no prefix no request may name a URL."""
    assert not allowed("https://hooks.example.com/gk/", ())


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ("started,completed", ("job.started", "job.completed")),
        ("completed, job.queued", ("job.queued", "job.completed")),
        ("progress", ("job.progress",)),
        ("done", None),
        ("", None),
        ("started,,bogus", None),
    ],
)
def test_event_filter(header: str, want: tuple[str, ...] | None) -> None:
    """Gatekeeper-Webhook-Events names events short or long, in any order; others are refused."""
    got = parse_events(header)
    if want is None:
        assert isinstance(got, str)
    else:
        assert got == want


def _cfg(extra: str = "") -> object:
    return load_config(
        "jobs:\n  webhooks:\n"
        "    allow: [https://hooks.example.com/gk/]\n"
        "    request_secret_env: GK_HOOK\n" + extra
    ).jobs.webhooks


@pytest.mark.parametrize(
    ("urls", "events", "want"),
    [
        ([], [], None),
        (["https://hooks.example.com/gk/a"], [], ("job.completed",)),  # request_events
        (["https://hooks.example.com/gk/a"], ["started"], ("job.started",)),
        (["https://evil.net/gk/a"], [], "not under a prefix"),
        (["http://169.254.169.254/latest"], [], "not under a prefix"),
        (["https://hooks.example.com@evil.net/gk/a"], [], "user or password"),
        (["https://hooks.example.com/gk/a"], ["nope"], "unknown events"),
        ([], ["started"], "needs a Gatekeeper-Webhook"),
        (["https://hooks.example.com/gk/a", "https://hooks.example.com/gk/b"], [], "one "),
    ],
)
def test_request_webhook(urls: list[str], events: list[str], want: object) -> None:
    """A request's own webhook: allowed URLs stored with their events, the rest refused 400."""
    cfg = _cfg()
    if isinstance(want, str):
        with pytest.raises(WebhookRefused) as e:
            decide(urls, events, cfg)  # type: ignore[arg-type]
        assert want in e.value.detail and e.value.status == 400
        assert e.value.reason == "webhook_refused"
    else:
        got = decide(urls, events, cfg)  # type: ignore[arg-type]
        assert (got if got is None else tuple(json.loads(got)["events"])) == want


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    """Each retry waits twice as long (half of it jittered), never past the cap."""
    assert [backoff(n, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(40, lambda: 1.0) == BACKOFF_CAP
    assert backoff(10_000, lambda: 0.0) == BACKOFF_CAP / 2


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (410, Outcome.GONE),
        (301, Outcome.RETRY),  # redirects are not followed
        (404, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (None, Outcome.RETRY),  # no answer
    ],
)
def test_outcome_of_an_answer(status: int | None, outcome: Outcome) -> None:
    """2xx delivered, 410 gone, anything else (or nothing) retried."""
    assert classify(status) is outcome


def test_progress_throttle() -> None:
    """The first progress goes at once, the next only after the interval."""
    assert progress_due(None, 100.0, 5.0)
    assert not progress_due(100.0, 104.9, 5.0)
    assert progress_due(100.0, 105.0, 5.0)


def test_signature_verifies_with_the_reference_library() -> None:
    """Our headers verify with standardwebhooks.Webhook(secret).verify, and fail on any change."""
    payload = body("job.completed", 1_700_000_000.0, {"id": "x", "links": {"result": "/r"}})
    import time

    sent = headers(decode_secret(SECRET), "msg_1", int(time.time()), payload)
    assert Webhook(SECRET).verify(payload, sent)["type"] == "job.completed"
    with pytest.raises(Exception):  # noqa: B017 - the library's own WebhookVerificationError
        Webhook(SECRET).verify(payload + b" ", sent)


@pytest.mark.parametrize("bad", ["abc", "whsec_!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_bad_secrets(bad: str) -> None:
    """A secret that is not whsec_ + base64 of 16+ bytes is refused with why."""
    with pytest.raises(SecretError):
        decode_secret(bad)


def test_targets_by_event_and_route() -> None:
    """A destination hears the events and routes it asked for; a request's own its events."""
    cfg = load_config(
        """
routes:
  - {name: gen, match: {path: /generate/**}, action: queue}
  - {name: other, match: {path: /other}, action: queue}
jobs:
  webhooks:
    destinations:
      - {name: all, url: http://a.example/h, secret_env: A}
      - {name: ends, url: http://b.example/h, events: [completed], routes: [gen], secret_env: B}
"""
    ).jobs.webhooks
    rec = JobRecord("j1", "gen", "c", False, "POST", "/generate/x", (), None, 0)
    assert [d for d, _ in targets(cfg, rec, "gen", "job.started")] == ["all"]
    assert [d for d, _ in targets(cfg, rec, "gen", "job.completed")] == ["all", "ends"]
    assert [d for d, _ in targets(cfg, rec, "other", "job.completed")] == ["all"]
    own = JobRecord(
        "j2",
        "gen",
        "c",
        False,
        "POST",
        "/g",
        (),
        None,
        0,
        webhook=json.dumps({"url": "https://h.example/x", "events": ["job.completed"]}),
    )
    assert targets(cfg, own, "gen", "job.completed")[-1] == (
        "@request:https://h.example:443",
        "https://h.example/x",
    )


@pytest.mark.parametrize(
    ("yaml_text", "path", "fragment"),
    [
        ("jobs:\n  webhooks:\n    allow: [https://u@h.example/]\n", "jobs.webhooks.allow", "user"),
        (
            "jobs:\n  webhooks:\n    allow: [https://h.example/]\n",
            "jobs.webhooks.allow",
            "request_secret",
        ),
        (
            "jobs:\n  webhooks:\n    progress_interval: -1\n",
            "jobs.webhooks.progress_interval",
            "> 0",
        ),
        ("jobs:\n  webhooks:\n    concurrency: 0\n", "jobs.webhooks.concurrency", ">= 1"),
        (
            "jobs:\n  webhooks:\n    destinations:\n      - {name: a, url: ftp://x/}\n",
            "jobs.webhooks.destinations[0].url",
            "http",
        ),
        (
            "jobs:\n  webhooks:\n    destinations:\n      - {name: a, url: http://x/}\n",
            "jobs.webhooks.destinations[0].secret_file",
            "exactly one",
        ),
        (
            "jobs:\n  webhooks:\n    destinations:\n"
            "      - {name: a, url: http://x/, secret_env: A, events: [finished]}\n",
            "jobs.webhooks.destinations[0].events",
            "unknown event",
        ),
        (
            "jobs:\n  webhooks:\n    destinations:\n"
            "      - {name: a, url: http://x/, secret_env: A, routes: [nope]}\n",
            "jobs.webhooks.destinations[0].routes",
            "no queue route",
        ),
    ],
)
def test_config_problems_name_path_and_line(yaml_text: str, path: str, fragment: str) -> None:
    """Every bad webhook key is reported with its YAML path, a line and why."""
    with pytest.raises(ConfigError) as e:
        load_config(yaml_text)
    problems = [p for p in e.value.problems if p.path == path]
    assert problems, [str(p) for p in e.value.problems]
    assert fragment in problems[0].message and problems[0].line is not None


def test_openapi_fragment() -> None:
    """The payload's schema is a components/webhooks fragment the OpenAPI document merges."""
    doc = openapi_fragment()
    assert set(doc["components"]["schemas"]) == {"WebhookEvent", "WebhookJob"}
    assert set(doc["webhooks"]) == {"job.queued", "job.started", "job.progress", "job.completed"}
