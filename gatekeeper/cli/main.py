"""The ``gatekeeper`` command line: the parser, and each command's entry.

A command's work lives in its own module, imported when it runs (``cli.status``
the status client and its watch, ``cli.demo`` the demo, ``app`` the server),
so ``gatekeeper --help`` loads none of them.

    gatekeeper run --config rules.yaml [--upstream URL] [--listen H:P] [--admin-listen H:P]
                   [--agent-listen H:P] [--box-id NAME]
                   [--state-dir DIR]
    gatekeeper check --config rules.yaml
    gatekeeper engine-sim [--listen H:P] [--seconds N] ...
    gatekeeper demo
    gatekeeper status [--admin URL] [--watch]
    gatekeeper reload [--admin URL]
    gatekeeper dashboard [--config rules.yaml]
    gatekeeper alert-rules [--config rules.yaml]
    gatekeeper schema

Exit codes: 0 success, 2 invalid configuration or usage, 141 (128 + SIGPIPE, as for
`yes | head`) when the reader of stdout went away, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gatekeeper import __version__
from gatekeeper.cli.output import broken_pipe
from gatekeeper.config import Config, ConfigError, load_config_file
from gatekeeper.observability.logs import setup_logging

PACKAGED_RULES = Path(__file__).resolve().parent.parent / "rules.yaml"


def default_config_path() -> Path:
    """``./rules.yaml`` when there is one, else the documented default shipped in the package."""
    local = Path("rules.yaml")
    return local if local.is_file() else PACKAGED_RULES


def _load(path: str | None) -> Config:
    return load_config_file(path or default_config_path())


def cmd_check(args: argparse.Namespace) -> int:
    from gatekeeper.observability.summary import config_warnings, describe, describe_signals
    from gatekeeper.resources.samplers import probe

    # Name the file on the first line, whatever the outcome: without --config outside a
    # checkout this is the packaged default, which a reader would not guess.
    path = Path(args.config) if args.config else default_config_path()
    where = os.path.abspath(path)  # not resolve(): ./rules.yaml may be a symlink
    if not args.config and path == PACKAGED_RULES:
        where += " (the packaged default: no --config and no ./rules.yaml here)"
    try:
        cfg = load_config_file(path)
        # The webhook secrets are read from files / the environment, not the rules: an
        # unreadable one is as wrong as a bad key (issue #20 §1), named by its YAML path.
        from gatekeeper.jobs.webhooks.secrets import check as check_secrets

        check_secrets(cfg)
    except ConfigError:
        print(f"checked {where}: INVALID", flush=True)
        raise
    warnings = config_warnings(cfg)
    print(f"checked {where}: OK" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    for line in describe(cfg):
        print("  " + line)
    # Probed on this machine now: check runs where gatekeeper will (NVML absent is a line).
    print("  signals (this machine, now): " + describe_signals(probe(cfg.admission.resources)))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return _check_store(cfg)


def _check_store(cfg: Config) -> int:
    """The shared job store (issue #21): connection and schema version; 1 if unusable."""
    if cfg.jobs.store != "postgres":
        return 0
    from gatekeeper.config.jobs import postgres_dsn

    pg = cfg.jobs.postgres
    try:
        from gatekeeper.jobs.postgres.probe import check

        dsn = postgres_dsn(pg, cfg.source)
        ok, line = check(dsn, pg.schema, max(pg.timeout, 5.0))
    except ImportError as exc:
        ok, line = False, f"needs asyncpg: pip install 'gatekeeper[postgres]' ({exc})"
    except ValueError as exc:
        ok, line = False, str(exc)
    print(f"  job store postgres: {line}", flush=True)
    if not ok:
        print(f"checked job store: UNUSABLE: {line}", file=sys.stderr)
    return 0 if ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    from gatekeeper.app.process import Gatekeeper, serve
    from gatekeeper.jobs.store import StateDirError, StoreOpenError
    from gatekeeper.lifecycle.changes import Overrides
    from gatekeeper.lifecycle.eventloop import LoopUnavailable, loop_factory, tune_gc
    from gatekeeper.lifecycle.eventloop import run as run_on_loop
    from gatekeeper.observability.logs import redact_url

    setup_logging(args.log_format, args.log_level)
    # Kept for every reload: a flag keeps beating the file (issue #5 §1).
    overrides = Overrides(
        args.upstream,
        args.listen,
        args.admin_listen,
        args.state_dir,
        args.agent_listen,
        args.box_id,
    )
    cfg = overrides.apply(_load(args.config))

    def ready(gk: Gatekeeper) -> None:
        upstream = redact_url(cfg.upstream.url)
        for url in gk.proxy_urls:
            print(f"gatekeeper proxy listening on {url} -> upstream {upstream}", flush=True)
        for url in gk.agent_urls:
            print(f"gatekeeper agent-check listening on {url}", flush=True)
        for url in gk.admin_urls:
            print(f"gatekeeper admin listening on {url}", flush=True)

    try:
        name, _ = loop_factory(args.loop)
    except LoopUnavailable as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("gatekeeper").info("event loop: %s", name)
    tune_gc()
    try:
        return run_on_loop(serve(cfg, ready=ready, overrides=overrides), args.loop)
    except StateDirError as exc:  # before anything was bound: nothing to undo
        print(f"gatekeeper: cannot use the state directory: {exc}", file=sys.stderr)
        return 2
    except StoreOpenError as exc:
        print(f"gatekeeper: cannot open the job store: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # typically: address already in use
        print(f"gatekeeper: cannot start: {exc}", file=sys.stderr)
        return 1


def cmd_engine_sim(args: argparse.Namespace) -> int:
    from gatekeeper import enginesim

    return enginesim.main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from gatekeeper.cli.demo import run

    return run(args, args.config or str(default_config_path()))


# ------------------------------ generated: dashboard, alert rules, schema (status: cli.clients)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import json

    from gatekeeper.observability.dashboard import dashboard

    print(json.dumps(dashboard(_load(args.config)), indent=2, ensure_ascii=False))
    return 0


def cmd_alert_rules(args: argparse.Namespace) -> int:
    from gatekeeper.observability.alerts.promrules import rule_file

    sys.stdout.write(rule_file(_load(args.config)))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gatekeeper.config.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


# --------------------------------------------------------------------------- parser

CONFIG_HELP = "rules file (default: ./rules.yaml if there is one, else the packaged default)"

if TYPE_CHECKING:  # generic only in the type stubs
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default, unless its help already says it or there is none
    to show (an off flag; an unset option whose help explains what applies instead)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False):
            return text
        return super()._get_help_string(action)


def _command(sub: Subparsers, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line ``summary`` (in ``gatekeeper --help``) and a
    ``description`` (in ``gatekeeper NAME --help``); every option's help shows its default."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=_HelpFormatter,
    )


def _add_run_commands(sub: Subparsers) -> None:
    from gatekeeper import enginesim  # the package loads its modules lazily (flags only, here)

    run = _command(
        sub,
        "run",
        "run the proxy and the admin listener",
        "Serve the public proxy (point the frontend here) and the admin listener (status "
        "page, /healthz, /readyz, /metrics, /status) until SIGINT/SIGTERM, which drains: "
        "running generations finish first. SIGHUP reloads the rules file.",
    )
    run.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    run.add_argument(
        "--upstream", metavar="URL", help="engine URL (default: the file's upstream.url)"
    )
    run.add_argument(
        "--listen", metavar="HOST:PORT", help="public listener (default: the file's listen)"
    )
    run.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="admin listener (default: the file's admin_listen)",
    )
    run.add_argument(
        "--agent-listen",
        metavar="HOST:PORT",
        help="HAProxy agent-check port (default: the file's agent_listen, null = off)",
    )
    run.add_argument(
        "--box-id",
        metavar="NAME",
        help="this box's name behind HAProxy, the prefix of its job ids (default: the "
        "file's box_id)",
    )
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where queued jobs and kept results live (default: the file's jobs.dir, "
        "else gatekeeper-state/ next to the rules file)",
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: key=value lines for people; json: one object per line for a log pipeline",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="lowest level logged; INFO includes one access-log line per request",
    )
    run.add_argument(
        "--loop",
        default="auto",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop: auto = uvloop when installed (pip install 'gatekeeper[speed]'), "
        "else asyncio",
    )
    run.set_defaults(func=cmd_run)

    check = _command(
        sub,
        "check",
        "validate a rules file without starting",
        "Validate a rules file the way `run` and a reload do. The first line names the "
        "file checked; exit 0 with a summary of the effective rules, or 2 with every "
        "problem and its line.",
    )
    check.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    check.set_defaults(func=cmd_check)

    sim = _command(
        sub,
        "engine-sim",
        "run the bundled engine simulator",
        "A stand-in for the music engine: POST /generate loads a CPU core and holds memory "
        "for --seconds, then answers a WAV. Used by the demo and the tests.",
    )
    enginesim.add_arguments(sim)
    sim.set_defaults(func=cmd_engine_sim)

    demo = _command(
        sub,
        "demo",
        "engine simulator + gatekeeper + a live status line",
        "Start the engine simulator and gatekeeper in front of it on 127.0.0.1, print a "
        "copy-paste curl and show a live status line until Ctrl-C. The rules are --config "
        "with admission.expected_seconds set to --seconds.",
    )
    demo.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    demo.add_argument("--port", type=int, default=8080, help="gatekeeper's public port")
    demo.add_argument("--admin-port", type=int, default=9090, help="gatekeeper's admin port")
    demo.add_argument("--engine-port", type=int, default=8000, help="the simulator's port")
    demo.add_argument("--seconds", type=float, default=60.0, help="duration of one simulated song")
    demo.add_argument(
        "--memory-mb", type=int, default=256, help="memory held per simulated song, in MiB"
    )
    demo.add_argument(
        "--log-every",
        type=float,
        default=5.0,
        help="seconds between status lines when stdout is not a terminal",
    )
    demo.set_defaults(func=cmd_demo)


def _add_observability_commands(sub: Subparsers) -> None:
    from gatekeeper.cli.clients import add_client_commands  # status, reload: parser only

    add_client_commands(sub, _command)

    dash = _command(
        sub,
        "dashboard",
        "print the Grafana dashboard JSON for the rules",
        "Print a Grafana dashboard (JSON, for Dashboards > Import) whose panels draw the "
        "rules' CPU and memory thresholds and cover their admit routes.",
    )
    dash.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    dash.set_defaults(func=cmd_dashboard)

    rules = _command(
        sub,
        "alert-rules",
        "print the alert rules as a Prometheus rule file",
        "Print the rules' alerts.rules as a Prometheus rule file (group gatekeeper): the "
        "same alerts gatekeeper evaluates itself, as PromQL over its metrics.",
    )
    rules.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    rules.set_defaults(func=cmd_alert_rules)

    schema = _command(
        sub,
        "schema",
        "print the JSON Schema of rules.yaml",
        "Print the JSON Schema (draft 2020-12) of rules.yaml, generated from the declared "
        "keys: editors complete and check the file with it (the packaged copy is "
        "gatekeeper/rules.schema.json). gatekeeper check stays the full check.",
    )
    schema.set_defaults(func=cmd_schema)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gatekeeper",
        description="A sidecar reverse proxy that admits one AI music generation at a time.",
        epilog="`gatekeeper COMMAND --help` describes each command. Exit codes: 0 success, "
        "2 invalid rules or usage, 141 output pipe closed (as `yes | head`), 1 anything else.",
    )
    p.add_argument("--version", action="version", version=f"gatekeeper {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    _add_observability_commands(sub)
    return p


# What a shell reports for a command killed by SIGPIPE (128 + 13), e.g. `yes | head`.
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # output still buffered meets a closed pipe here, not at exit
    except ConfigError as exc:  # every command: the problems, each with its line; exit 2
        print(exc, file=sys.stderr)
        return 2
    except BrokenPipeError:
        return broken_pipe()
    return code
