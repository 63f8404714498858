"""The Grafana dashboard, generated from the rules (issue #3 §4).

A pure function, config in, dict out: ``dashboard(config)`` is what
``gatekeeper dashboard`` prints and what ``dashboards/gatekeeper.json`` holds
for the default ``rules.yaml`` (a test fails when that file is stale).
Generating it means the CPU and memory panels draw the reject and recover
thresholds the gate actually uses, and the duration quantiles cover exactly
the routes that ``admit`` generations.

The JSON is in Grafana's export format for "Dashboards → New → Import":
``__inputs`` declares the Prometheus datasource as ``DS_PROMETHEUS`` (the
importer asks which datasource to use and substitutes ``${DS_PROMETHEUS}``
everywhere), ``__requires`` lists Grafana 10+ and the panel plugins, and the
``instance`` template variable (``label_values(gatekeeper_build_info,
instance)``) filters every query with ``{instance=~"$instance"}``.

The modules, imports pointing down::

    layout    rows on the 24-column grid, ids, the document around the panels
    panels    what each panel shows and its PromQL (config -> panel dicts)
    queue     the waiting room's panels, built the same way
    boxes     the boxes row (a shared job store only: jobs.store postgres)
    grafana   how Grafana spells targets, thresholds, options, overrides
    promql    the instance selector, exact-match regex literals, route alternations
"""

from gatekeeper.observability.dashboard.grafana import DS
from gatekeeper.observability.dashboard.layout import SCHEMA_VERSION, UID, dashboard
from gatekeeper.observability.dashboard.panels import STATE_CODES
from gatekeeper.observability.dashboard.promql import DURATION_WINDOW, SEL, promql_regex_literal

__all__ = [
    "DS",
    "DURATION_WINDOW",
    "SCHEMA_VERSION",
    "SEL",
    "STATE_CODES",
    "UID",
    "dashboard",
    "promql_regex_literal",
]
