"""``gatekeeper reload``: ask a running gatekeeper to re-read its rules file.

It calls ``POST /reload`` on the admin listener (``admin.reload_rules``), the same
reload that SIGHUP and the file watcher trigger, and says what happened:

- exit 0: the rules were reloaded; one line per changed key (``key: old -> new``),
  and the listener keys that only a restart applies;
- exit 2: the file is invalid and the previous rules stay in force; every problem
  with its line, as ``gatekeeper check`` prints them;
- exit 1: gatekeeper could not be reached, or answered something else.

The admin URL is found as for ``gatekeeper status`` (``--admin``, else
``admin_listen`` of ``--config`` or ``./rules.yaml``, else the default). A signal
is not needed: ``kill -HUP`` would need the process id of a process named
``python``, which ``pidof gatekeeper`` does not find.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gatekeeper.cli.status import admin_base, default_admin_url
from gatekeeper.config import ConfigError


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def reload_report(body: dict[str, Any]) -> tuple[int, list[str]]:
    """The exit code and the lines to print for a ``POST /reload`` answer (pure)."""
    source = body.get("source", "?")
    if body.get("result") == "success":
        changed = body.get("changed") or []
        restart = body.get("needs_restart") or []
        head = f"reloaded {source}: " + (
            f"{len(changed)} setting(s) changed" if changed else "no change"
        )
        lines = [head]
        lines += [f"  {c['key']}: {_value(c['old'])} -> {_value(c['new'])}" for c in changed]
        for c in restart:
            lines.append(
                f"  {c['key']}: {_value(c['old'])} -> {_value(c['new'])} "
                "(needs a restart; the running value stays)"
            )
        return 0, lines
    if body.get("result") == "failure":
        errors = body.get("errors") or []
        lines = [
            f"reload of {source} FAILED: {len(errors)} problem(s); the previous rules stay in force"
        ]
        for e in errors:
            where = f"line {e['line']}: " if e.get("line") else ""
            lines.append(f"  {where}{e.get('path') or '(file)'}: {e.get('message')}")
        return 2, lines
    return 1, [f"unexpected answer: {json.dumps(body, ensure_ascii=False)[:500]}"]


def run_reload(args: argparse.Namespace) -> int:
    """``gatekeeper reload [--admin URL] [--config PATH] [--json]``."""
    import httpx

    try:
        base = admin_base(args.admin) if args.admin else default_admin_url(args.config)
    except ConfigError as exc:
        print(f"{exc}\n(pass --admin URL to skip reading the rules file)", file=sys.stderr)
        return 2
    url = base + "/reload"
    try:
        with httpx.Client(timeout=args.timeout, trust_env=False) as client:
            resp = client.post(url)
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
    except (httpx.HTTPError, ValueError) as exc:
        print(f"gatekeeper reload: cannot reload through {url}: {exc}", file=sys.stderr)
        print("is gatekeeper running? is --admin right?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return {"success": 0, "failure": 2}.get(str(body.get("result")), 1)
    code, lines = reload_report(body)
    print("\n".join(lines), file=sys.stdout if code == 0 else sys.stderr)
    return code
