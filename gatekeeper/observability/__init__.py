"""What operators see: metrics, counters, logs, status, alerts and the dashboard.

``metrics`` defines every Prometheus metric once; ``counters`` writes counts;
``gauges`` mirror live state at scrape time; ``status`` builds the status
document; ``logs`` formats log lines and ``lograte`` decides which refusal
lines a flood writes (pure, per second); ``summary`` describes the effective
rules; ``alerts/`` evaluates and delivers the built-in alerts; ``dashboard/``
generates the Grafana dashboard. Readers of live state take small Protocols,
never the app's state.
"""
