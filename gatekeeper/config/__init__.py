"""rules.yaml: the schema, its defaults, and validation with YAML line numbers.

The config is a tree of frozen dataclasses, built once from text (or a file)
and never mutated: a reload builds a new ``Config`` and swaps one reference.

Each key is declared once, as a field of its section's dataclass with a
``declare.Spec`` (kind, bounds, choices, documentation); one reader
(``build.read_section``) turns YAML into those objects and one generator
(``schema.config_schema``) turns the same declarations into the JSON Schema
that ``gatekeeper schema`` prints. Adding a key is one field.

Validation collects *every* problem before failing, each naming its YAML path,
its line and the bad value, because an operator fixing a file at 3 a.m. should
not play whack-a-mole. Unknown keys are errors, with the closest known key
suggested: a typo such as ``reject_abve`` must never silently leave a threshold
at its default.

Modules::

    errors     ConfigProblem (one, with path, line, value), ConfigError (all of them)
    values     durations, HOST:PORT, URLs, path globs, and their JSON Schema (no YAML)
    reader     Section: typed getters over a YAML mapping, problems with lines; Context
    declare    Spec and the field helpers a key is declared with; @declared
    build      read_section: the one reader, driven by the declarations
    shipped    the packaged rules.yaml, source of the messages, routes, alerts defaults
    upstream   upstream.*            admission  admission.*
    limits     limits.*              routes     routes[]
    messages   messages.*            alerts     alerts.*
    jobs       jobs.* (the state directory of queued jobs and kept results)
    root       Config, shutdown, reload, jobs_path, load_config / load_config_file
    schema     config_schema: the JSON Schema of rules.yaml (gatekeeper schema)

Usage::

    cfg = load_config(text, source="rules.yaml")   # raises ConfigError
    cfg.admission.max_in_flight
"""

from gatekeeper.config.admission import (
    PSI_DEFAULT_LINE,
    Admission,
    ClientKey,
    Gpu,
    PressureThreshold,
    Queue,
    Resources,
    Threshold,
)
from gatekeeper.config.alerts import (
    OPERATORS,
    RECEIVER_TYPES,
    RESERVED_LABELS,
    SEVERITIES,
    SIGNALS,
    AlertRule,
    Alerts,
    Receiver,
    default_alert_rules,
    parse_expr,
)
from gatekeeper.config.errors import ConfigError, ConfigProblem
from gatekeeper.config.jobs import Jobs
from gatekeeper.config.limits import Limits
from gatekeeper.config.logs import Log, RefusalLog
from gatekeeper.config.messages import DEFAULT_MESSAGES, MESSAGE_FIELDS, REASONS
from gatekeeper.config.root import Config, Reload, Shutdown, load_config, load_config_file
from gatekeeper.config.routes import (
    ACTIONS,
    DEFAULT_ROUTES,
    GATED_ACTIONS,
    HTTP_METHODS,
    Action,
    Route,
)
from gatekeeper.config.upstream import (
    DEFAULT_ENGINE,
    PASSTHROUGH_LIMITS,
    Engine,
    Pool,
    PoolLimits,
    Probe,
    ProbeBusy,
    Timeouts,
    Upstream,
)
from gatekeeper.config.values import HostPort, parse_duration

__all__ = [
    "ACTIONS",
    "DEFAULT_ENGINE",
    "DEFAULT_MESSAGES",
    "DEFAULT_ROUTES",
    "GATED_ACTIONS",
    "HTTP_METHODS",
    "MESSAGE_FIELDS",
    "OPERATORS",
    "PASSTHROUGH_LIMITS",
    "PSI_DEFAULT_LINE",
    "REASONS",
    "RECEIVER_TYPES",
    "RESERVED_LABELS",
    "SEVERITIES",
    "SIGNALS",
    "Action",
    "Admission",
    "AlertRule",
    "Alerts",
    "ClientKey",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Engine",
    "Gpu",
    "HostPort",
    "Jobs",
    "Limits",
    "Log",
    "Pool",
    "PoolLimits",
    "PressureThreshold",
    "Probe",
    "ProbeBusy",
    "Queue",
    "Receiver",
    "RefusalLog",
    "Reload",
    "Resources",
    "Route",
    "Shutdown",
    "Threshold",
    "Timeouts",
    "Upstream",
    "default_alert_rules",
    "load_config",
    "load_config_file",
    "parse_duration",
    "parse_expr",
]
