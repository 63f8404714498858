"""A request's own webhook: ``Gatekeeper-Webhook: <url>`` and ``Gatekeeper-Webhook-Events``.

Read from the request head, before a byte of the body: a URL that is not under
one of ``jobs.webhooks.allow`` (``allow.allowed``: parsed, compared by scheme,
host, port and a path prefix at a ``/`` boundary) is ``400`` with a JSON
``detail`` and reason ``webhook_refused``, and is never fetched. An allowed one
is stored on the job's record (``JobRecord.webhook``), so its deliveries
survive a restart. Neither header is forwarded to the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from multidict import CIMultiDictProxy

from gatekeeper.config.webhooks import Webhooks
from gatekeeper.core.errors import BadRequest
from gatekeeper.jobs.webhooks.allow import allowed, parse
from gatekeeper.jobs.webhooks.policy import parse_events

__all__ = ["HEADERS", "WebhookRefused", "own_webhook", "without_webhook_headers"]

URL_HEADER = "Gatekeeper-Webhook"
EVENTS_HEADER = "Gatekeeper-Webhook-Events"
HEADERS = frozenset({URL_HEADER.lower(), EVENTS_HEADER.lower()})


class WebhookRefused(BadRequest):
    reason = "webhook_refused"


def decide(urls: list[str], events: list[str], cfg: Webhooks) -> str | None:
    """The record's ``webhook`` JSON for these header values, None without a webhook;
    raises ``WebhookRefused`` (400) for anything not allowed. PURE."""
    if not urls:
        if events:
            raise WebhookRefused(f"{EVENTS_HEADER} needs a {URL_HEADER}")
        return None
    if len(urls) > 1 or len(events) > 1:
        raise WebhookRefused(f"one {URL_HEADER} (and one {EVENTS_HEADER}) per request")
    url = urls[0].strip()
    problem = parse(url)
    if isinstance(problem, str):
        raise WebhookRefused(f"{URL_HEADER}: the URL {problem}")
    if not allowed(url, cfg.allow):
        raise WebhookRefused(
            f"{URL_HEADER}: the URL is not under a prefix of jobs.webhooks.allow"
            if cfg.allow
            else f"{URL_HEADER}: this gatekeeper allows no webhook URL (jobs.webhooks.allow)"
        )
    wanted = cfg.request_events
    if events:
        got = parse_events(events[0])
        if isinstance(got, str):
            raise WebhookRefused(f"{EVENTS_HEADER} {got}")
        wanted = got
    return json.dumps({"url": url, "events": list(wanted)}, separators=(",", ":"))


def own_webhook(headers: CIMultiDictProxy[str], cfg: Webhooks) -> str | None:
    """``decide`` over a request's headers."""
    return decide(headers.getall(URL_HEADER, []), headers.getall(EVENTS_HEADER, []), cfg)


def without_webhook_headers(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The headers for the engine: gatekeeper's webhook headers are its own."""
    return tuple((k, v) for k, v in items if k.lower() not in HEADERS)
