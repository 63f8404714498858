"""How Grafana spells a panel: stat, time series and bar gauge, with their targets.

Nothing here knows gatekeeper's metrics; ``panels`` says what each panel shows.
The builders emit keys in one fixed order, that of ``dashboards/gatekeeper.json``
(the freshness test compares its text), and a fresh object at every level (the
document is the caller's to change). A panel's queries get the refIds A, B, C...
in the order they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Panel = dict[str, Any]
# (PromQL expression, legend); a panel's list of these becomes its targets.
Query = tuple[str, str]
# (value the step starts at, None for the base step; color).
Step = tuple[float | None, str]

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def stat(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    steps: Sequence[Step],
    mappings: Sequence[tuple[int, str, str]] = (),
    decimals: int | None = None,
    text_mode: str = "value",
) -> Panel:
    """A stat panel colored by ``steps``; ``mappings`` turn values into words."""
    defaults = _present(
        mappings=_value_map(mappings) if mappings else None,
        thresholds=_thresholds(steps),
        color={"mode": "thresholds"},
        unit="none",
        decimals=decimals,
    )
    options = {
        "reduceOptions": _reduce(),
        "orientation": "auto",
        "textMode": text_mode,
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "auto",
        "wideLayout": True,
        "showPercentChange": False,
    }
    return _panel("stat", title, description, queries, defaults, (), options)


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str,
    custom: Mapping[str, Any] | None = None,
    decimals: int | None = None,
    maximum: float | None = None,
    steps: Sequence[Step] = (),
    overrides: Sequence[Panel] = (),
) -> Panel:
    """A time series from 0 up, one line per series; ``custom`` changes the line style."""
    defaults = _present(
        custom=_line_style(custom or {}),
        unit=unit,
        decimals=decimals,
        min=0,
        max=maximum,
        thresholds=_thresholds(steps) if steps else None,
        color={"mode": "palette-classic"},
    )
    options = {
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
        "tooltip": {"mode": "multi", "sort": "none"},
    }
    return _panel("timeseries", title, description, queries, defaults, overrides, options)


def bargauge(
    title: str,
    description: str | None,
    queries: Sequence[Query],
    *,
    steps: Sequence[Step],
    unit: str | None = None,
    decimals: int | None = None,
    overrides: Sequence[Panel] = (),
    display_mode: str = "gradient",
    name_placement: str = "auto",
) -> Panel:
    """Horizontal bars from 0, one per series, colored by ``steps``."""
    defaults = _present(
        unit=unit,
        decimals=decimals,
        min=0,
        thresholds=_thresholds(steps),
        color={"mode": "thresholds"},
    )
    options = {
        "orientation": "horizontal",
        "displayMode": display_mode,
        "showUnfilled": True,
        "reduceOptions": _reduce(),
        "valueMode": "color",
        "namePlacement": name_placement,
        "minVizWidth": 8,
        "minVizHeight": 16,
        "sizing": "auto",
    }
    return _panel("bargauge", title, description, queries, defaults, overrides, options)


def override(name: str, properties: Mapping[str, Any], *, matcher: str = "byName") -> Panel:
    """Field properties (``{"unit": "s", "custom.lineWidth": 0}``) for the series ``name``."""
    return {
        "matcher": {"id": matcher, "options": name},
        "properties": [{"id": k, "value": v} for k, v in properties.items()],
    }


def colored(pattern: str, color: str) -> Panel:
    """Series whose name matches the regex ``pattern`` drawn in ``color``."""
    return override(pattern, {"color": fixed(color)}, matcher="byRegexp")


def dashed(name: str, color: str) -> Panel:
    """The series ``name`` as a dashed, unfilled line in ``color`` (a reference value)."""
    return override(
        name,
        {
            "custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
            "custom.fillOpacity": 0,
            "color": fixed(color),
        },
    )


def fixed(color: str) -> dict[str, str]:
    return {"mode": "fixed", "fixedColor": color}


def _panel(
    kind: str,
    title: str,
    description: str | None,
    queries: Sequence[Query],
    defaults: Panel,
    overrides: Iterable[Panel],
    options: Panel,
) -> Panel:
    targets = [
        {"datasource": dict(DS), "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
        for i, (expr, legend) in enumerate(queries)
    ]
    return _present(
        type=kind,
        title=title,
        description=description,
        targets=targets,
        fieldConfig={"defaults": defaults, "overrides": list(overrides)},
        options=options,
    )


def _present(**items: Any) -> Panel:
    """``items`` in the order given, without those that are None (absent from the JSON)."""
    return {k: v for k, v in items.items() if v is not None}


def _thresholds(steps: Iterable[Step]) -> Panel:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def _value_map(entries: Iterable[tuple[int, str, str]]) -> list[Panel]:
    options = {
        str(value): {"text": text, "color": color, "index": i}
        for i, (value, text, color) in enumerate(entries)
    }
    return [{"type": "value", "options": options}]


def _reduce() -> Panel:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _line_style(changes: Mapping[str, Any]) -> Panel:
    custom: Panel = {
        "drawStyle": "line",
        "lineInterpolation": "linear",
        "lineWidth": 2,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": True,
        "stacking": {"mode": "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
        "axisSoftMin": 0,
    }
    return custom | dict(changes)
