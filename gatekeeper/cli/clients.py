"""The parser of the commands that talk to a running gatekeeper's admin listener:
``gatekeeper status`` (``cli.status``) and ``gatekeeper reload`` (``cli.reload``).

Each finds the admin listener the same way (``--admin``, else ``admin_listen`` of
``--config`` or ``./rules.yaml``, else the default); their work is imported when
they run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"


def cmd_status(args: argparse.Namespace) -> int:
    from gatekeeper.cli.status import show_status

    return show_status(args)


def cmd_reload(args: argparse.Namespace) -> int:
    from gatekeeper.cli.reload import run_reload

    return run_reload(args)


def _admin_options(cmd: argparse.ArgumentParser) -> None:
    """``--admin`` and ``--config``: how a client command finds a running gatekeeper."""
    cmd.add_argument(
        "--admin",
        metavar="URL",
        help=f"admin listener URL (default: admin_listen of --config or ./rules.yaml, "
        f"else {DEFAULT_ADMIN_URL})",
    )
    cmd.add_argument(
        "--config",
        metavar="PATH",
        help="rules file to take admin_listen from (default: ./rules.yaml if there is one)",
    )


def add_client_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``status`` and ``reload`` on ``sub`` through the CLI's ``command`` factory."""
    status = command(
        sub,
        "status",
        "show a running gatekeeper's status (one-shot or --watch)",
        "Read a running gatekeeper's /status from its admin listener and print it for a "
        "person (or --json for scripts). Exit 1 when it cannot be reached.",
    )
    _admin_options(status)
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    status.add_argument(
        "--all",
        action="store_true",
        help="list every waiting job (default: the first 100; at 10,000 waiting the full"
        " list costs gatekeeper ~80 ms of event loop per refresh)",
    )
    status.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    status.add_argument("--timeout", type=float, default=3.0, help="request timeout in seconds")
    status.set_defaults(func=cmd_status)

    reload = command(
        sub,
        "reload",
        "make a running gatekeeper re-read its rules file (admin POST /reload)",
        "Ask a running gatekeeper, through its admin listener, to re-read its rules file "
        "(the same reload as SIGHUP). Prints each changed setting; exit 0 reloaded, 2 the "
        "file is invalid (every problem listed; the previous rules stay), 1 unreachable.",
    )
    _admin_options(reload)
    reload.add_argument("--json", action="store_true", help="print the raw answer JSON")
    reload.add_argument("--timeout", type=float, default=10.0, help="request timeout in seconds")
    reload.set_defaults(func=cmd_reload)
