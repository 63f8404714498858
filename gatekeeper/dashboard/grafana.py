"""How Grafana spells the pieces of a panel: targets, thresholds, mappings, options, overrides.

Nothing here knows gatekeeper's metrics; ``panels`` says what each panel shows.
"""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def target(ref: str, expr: str, legend: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend, **extra}


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def value_map(*entries: tuple[int, str, str]) -> list[dict[str, Any]]:
    options = {
        str(value): {"text": text, "color": color, "index": i}
        for i, (value, text, color) in enumerate(entries)
    }
    return [{"type": "value", "options": options}]


def timeseries_custom(**over: Any) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineInterpolation": "stepAfter",
        "lineWidth": 2,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": True,
        "stacking": {"mode": "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
        "axisSoftMin": 0,
    }
    custom.update(over)
    return custom


def stat_options(*, text_mode: str, color_mode: str) -> dict[str, Any]:
    return {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "auto",
        "textMode": text_mode,
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "auto",
        "wideLayout": True,
        "showPercentChange": False,
    }


def bar_options() -> dict[str, Any]:
    return {
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "valueMode": "color",
        "namePlacement": "auto",
        "minVizWidth": 8,
        "minVizHeight": 16,
        "sizing": "auto",
    }


def ts_options() -> dict[str, Any]:
    return {
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
        "tooltip": {"mode": "multi", "sort": "none"},
    }


def override(name: str, **props: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k, "value": v} for k, v in props.items()],
    }


def override_regex(pattern: str, color: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
    }


def dashed(name: str, color: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": color}},
        ],
    }
