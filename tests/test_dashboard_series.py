"""Every series the dashboard's queries name has a sample on a fresh gatekeeper (issue #18 §6).

A labelled series born at its first event leaves a panel saying "No data" on a
healthy box (and ``increase()`` never counts that first event). This scrapes
``/metrics`` of a new gatekeeper on the shipped rules, before any request, and
checks each selector of each dashboard query: the metric exists with at least one
sample whose labels match the selector's matchers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.admin import build_admin_app
from gatekeeper.app.wiring import create_state
from gatekeeper.config import load_config
from gatekeeper.observability.dashboard import dashboard

_SELECTOR = re.compile(r"\b(gatekeeper_[a-z_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from _exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _exprs(v)


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for name, op, value in matchers:
        got = labels.get(name, "")
        pattern = value.encode().decode("unicode_escape")
        ok = {
            "=": got == value,
            "!=": got != value,
            "=~": re.fullmatch(pattern, got) is not None,
            "!~": re.fullmatch(pattern, got) is None,
        }[op]
        if not ok:
            return False
    return True


async def test_every_dashboard_series_exists_at_start(aiohttp_client: Any) -> None:
    config = load_config("")
    st = await create_state(config)
    try:
        client = await aiohttp_client(build_admin_app(st))
        resp = await client.get("/metrics")
        assert resp.status == 200
        samples: dict[str, list[dict[str, str]]] = {}
        for family in text_string_to_metric_families(await resp.text()):
            for s in family.samples:
                samples.setdefault(s.name, []).append(dict(s.labels))
        missing: list[str] = []
        selectors = 0
        for expr in _exprs(dashboard(config)):
            for name, braces in _SELECTOR.findall(expr):
                matchers = [m for m in _MATCHER.findall(braces or "") if m[0] != "instance"]
                selectors += 1
                if not any(_matches(labels, matchers) for labels in samples.get(name, [])):
                    missing.append(f"{name}{braces}")
        assert selectors > 30
        assert not missing, f"no sample at start for: {sorted(set(missing))}"
    finally:
        await st.runtime.close()
