"""``jobs.webhooks``: signed job events POSTed to receivers (issue #20 §1; docs/webhooks.md).

Two kinds of destination:

- named ones, ``jobs.webhooks.destinations``: a URL, the events wanted, the queue
  routes whose jobs they hear (``routes``; null: every queue route) and a secret read
  from a file or an environment variable (never written in the rules file);
- a request's own, ``Gatekeeper-Webhook: <url>``: only a URL under one of the
  ``allow`` prefixes, signed with ``request_secret_file`` / ``request_secret_env``.

The secrets are read when the deliverer starts (``gatekeeper.jobs.webhooks.config``),
so this section stays plain values.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import yaml

from gatekeeper.config.build import read_section, section_check
from gatekeeper.config.declare import checked, custom, declared, duration, integer
from gatekeeper.config.reader import Context, Section, join, value_of
from gatekeeper.config.values import URL_SCHEMA, url_error

# The events a receiver may ask for (Standard Webhooks' ``type``), in a job's order.
EVENTS: tuple[str, ...] = ("job.queued", "job.started", "job.progress", "job.completed")
SHORT_EVENTS: tuple[str, ...] = tuple(e.removeprefix("job.") for e in EVENTS)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def webhook_url_error(v: Any) -> str | None:
    """An http(s) URL with a host, no userinfo, no query or fragment."""
    error = url_error(v)
    if error is not None:
        return error
    if urlsplit(v).username is not None or "@" in urlsplit(v).netloc:
        return "must not carry a user or password (user@host)"
    return None


def _check_events(v: Any) -> str | None:
    if isinstance(v, list) and v and all(isinstance(e, str) for e in v):
        bad = [e for e in v if e not in EVENTS and e not in SHORT_EVENTS]
        if not bad:
            return None
        return f"unknown event(s) {bad}: choose from {', '.join(EVENTS)}"
    return "must be a non-empty list of events, e.g. [job.started, job.completed]"


def to_events(v: list[str]) -> tuple[str, ...]:
    wanted = {e if e.startswith("job.") else f"job.{e}" for e in v}
    return tuple(e for e in EVENTS if e in wanted)


def _check_names(v: Any) -> str | None:
    if isinstance(v, list) and v and all(isinstance(n, str) and n for n in v):
        return None
    return "must be a non-empty list of route names, or null for every queue route"


def _check_allow(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list of URL prefixes, e.g. [https://hooks.example.com/gatekeeper/]"
    for item in v:
        error = webhook_url_error(item)
        if error is not None:
            return f"{item!r} {error}"
    return None


def _check_env(v: Any) -> str | None:
    return None if isinstance(v, str) and _ENV.fullmatch(v) else "must be a variable name"


def _check_file(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a file path"


_SECRET_FILE_DOC = (
    "A file holding the signing secret ('whsec_' + base64, Standard Webhooks), read at"
    " start; a relative path is relative to the rules file."
)
_SECRET_ENV_DOC = "The environment variable holding the signing secret (instead of a file)."


@declared
class Destination:
    name: str = checked(
        "The destination's name (the 'destination' of the log and status).",
        lambda v: None if isinstance(v, str) and _NAME.fullmatch(v) else "must be a name",
        {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        required="is required",
    )
    url: str = checked(
        "Where the events are POSTed.", webhook_url_error, URL_SCHEMA, required="is required"
    )
    events: tuple[str, ...] = checked(
        "The events sent: job.queued, job.started, job.progress, job.completed.",
        _check_events,
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        convert=to_events,
        default=EVENTS,
    )
    routes: tuple[str, ...] | None = checked(
        "The queue routes (by name) whose jobs this destination hears; null: every one.",
        _check_names,
        {"type": ["array", "null"], "minItems": 1, "items": {"type": "string"}},
        convert=tuple,
        allow_none=True,
        default=None,
    )
    secret_file: str | None = checked(
        _SECRET_FILE_DOC, _check_file, {"type": "string"}, allow_none=True, default=None
    )
    secret_env: str | None = checked(
        _SECRET_ENV_DOC, _check_env, {"type": "string"}, allow_none=True, default=None
    )


def _destinations(
    sec: Section, key: str, default: object, ctx: Context, done: dict[str, object]
) -> tuple[Destination, ...]:
    node = sec.node_of(key)
    if node is None or (isinstance(node, yaml.ScalarNode) and value_of(node) is None):
        return ()
    if not isinstance(node, yaml.SequenceNode):
        sec.problem(key, node, "must be a list of {name, url, events, secret_file}", value_of(node))
        return ()
    out: list[Destination] = []
    names: set[str] = set()
    for i, item in enumerate(node.value):
        ds = Section(item, join(join(sec.path, key), i), ctx.problems)
        d = read_section(
            Destination, ds, ctx, Destination(f"d{i}", "http://localhost"), close=False
        )
        if ds.has("name") and d.name in names:
            ds.problem("name", ds.node_of("name"), "duplicate destination name", d.name)
        names.add(d.name)
        if (d.secret_file is None) == (d.secret_env is None):
            ds.problem("secret_file", None, "give exactly one of secret_file and secret_env")
        ds.close()
        out.append(d)
    return tuple(out)


@declared
class Webhooks:
    destinations: tuple[Destination, ...] = custom(
        "Named receivers of job events: [{name, url, events, routes, secret_file | secret_env}].",
        read=_destinations,
        schema={"type": ["array", "null"]},
        shape=Destination,
        default=(),
    )
    allow: tuple[str, ...] = checked(
        "URL prefixes a request may name in Gatekeeper-Webhook (scheme, host, port and a"
        " path prefix at a '/' boundary); []: no request may name one.",
        _check_allow,
        {"type": "array", "items": URL_SCHEMA},
        convert=tuple,
        default=(),
    )
    request_events: tuple[str, ...] = checked(
        "The events a request's own destination gets when it sends no Gatekeeper-Webhook-Events.",
        _check_events,
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        convert=to_events,
        default=("job.completed",),
    )
    request_secret_file: str | None = checked(
        "The secret signing the deliveries to a request's own destination (a file).",
        _check_file,
        {"type": "string"},
        allow_none=True,
        default=None,
    )
    request_secret_env: str | None = checked(
        "... or the environment variable holding it.",
        _check_env,
        {"type": "string"},
        allow_none=True,
        default=None,
    )
    progress_interval: float = duration(
        "At most one job.progress per job and destination this often.", default=5.0
    )
    max_age: float = duration(
        "A delivery is retried (exponential backoff with jitter) until it is this old.",
        default=86400.0,
    )
    concurrency: int = integer(
        "Deliveries in flight to one destination at once (each destination has its own).",
        minimum=1,
        default=4,
    )
    timeout: float = duration("One delivery attempt's whole timeout.", default=10.0)


@section_check(Webhooks)
def _check(w: Webhooks, sec: Section, ctx: Context) -> Webhooks:
    if w.allow and (w.request_secret_file is None) == (w.request_secret_env is None):
        sec.problem(
            "allow",
            sec.node_of("allow"),
            "needs exactly one of request_secret_file and request_secret_env (the secret"
            " that signs the deliveries to a request's own destination)",
            list(w.allow),
        )
    return w
