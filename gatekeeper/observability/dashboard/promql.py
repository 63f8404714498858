"""PromQL pieces shared by the panel queries: the instance filter, regex literals, routes.

A panel that shows an alert signal takes its query from ``alerts.inputs.SIGNALS``
(``signal``), so the dashboard draws what the alert rules test.

Every metric selector goes through ``sel`` so that each query honours the
dashboard's ``instance`` variable (a test checks every selector for it).
"""

from __future__ import annotations

from gatekeeper.config import Config
from gatekeeper.observability.alerts.inputs import SIGNALS

SEL = 'instance=~"$instance"'

# Quantiles of jobs that take minutes need a window of many jobs, not a rate interval.
DURATION_WINDOW = "1h"

_RE2_SPECIAL = set(r"\.+*?()|[]{}^$")


def promql_regex_literal(text: str) -> str:
    """``text`` as an exact-match RE2 regex, escaped for a PromQL double-quoted string."""
    escaped = "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def sel(*matchers: str) -> str:
    """``{instance=~"$instance",<matchers>}``."""
    return "{" + ",".join((SEL, *matchers)) + "}"


def gauge(metric: str, *matchers: str) -> str:
    """The gauge ``metric`` as one series per instance (the highest, should it repeat)."""
    return f"max by (instance) ({metric}{sel(*matchers)})"


def signal(name: str) -> str:
    """The alert signal ``name`` as the alert rules ask for it, for the selected instances."""
    return SIGNALS[name].promql(SEL)


def per_minute(by: str, counter: str) -> str:
    """The rate of ``counter`` per minute, summed by the labels ``by``."""
    return f"sum by ({by}) (rate({counter}{sel()}[$__rate_interval])) * 60"


def in_range(by: str, counter: str) -> str:
    """Whole increments of ``counter`` over the dashboard's time range, summed by ``by``."""
    return f"sum by ({by}) (round(increase({counter}{sel()}[$__range])))"


def routes_with(config: Config, *actions: str) -> list[str]:
    """The names of the routes whose action is one of ``actions``, in rule order."""
    return [r.name for r in config.routes if r.action in actions]


def routes_regex(names: list[str]) -> str:
    """``names`` as one exact-match alternation (any route when there is none)."""
    return "|".join(promql_regex_literal(n) for n in names) if names else ".+"
