"""``gatekeeper status``: read a running gatekeeper's ``/status`` over HTTP and show it.

The admin URL comes from ``--admin``, else from ``admin_listen`` of ``--config`` or
``./rules.yaml``, else the documented default. One shot prints the document (for a
person, ``status_view``, or ``--json``); ``--watch`` redraws it every second and
survives gatekeeper restarts. httpx is imported when the command runs, not when
the parser is built.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from gatekeeper.cli.clients import DEFAULT_ADMIN_URL
from gatekeeper.cli.status_view import status_report
from gatekeeper.config import ConfigError, load_config_file


def default_admin_url(config: str | None) -> str:
    """The admin URL from ``--config`` or ``./rules.yaml``, else the documented default.

    A wildcard listen address (0.0.0.0, ::) is reached through loopback.
    """
    path = Path(config) if config else Path("rules.yaml")
    if config is None and not path.is_file():
        return DEFAULT_ADMIN_URL
    hp = load_config_file(path).admin_listen  # ConfigError is reported by the caller
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(hp.host, hp.host)
    return f"http://[{host}]:{hp.port}" if ":" in host else f"http://{host}:{hp.port}"


def admin_base(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/status")


def show_status(args: argparse.Namespace) -> int:
    """``gatekeeper status``: print the document once, or redraw it (``--watch``)."""
    import httpx

    try:
        base = admin_base(args.admin) if args.admin else default_admin_url(args.config)
    except ConfigError as exc:
        print(f"{exc}\n(pass --admin URL to skip reading the rules file)", file=sys.stderr)
        return 2
    url = base + ("/status?limit=all" if args.all else "/status")

    def fetch(client: httpx.Client) -> dict[str, object]:
        resp = client.get(url)
        resp.raise_for_status()
        doc = resp.json()
        if not isinstance(doc, dict) or "accepting" not in doc:
            raise ValueError(f"{url} did not answer a gatekeeper status document")
        return doc

    def render(doc: dict[str, object]) -> str:
        if args.json:
            return json.dumps(doc, indent=2, ensure_ascii=False)
        width = max(10, min(40, shutil.get_terminal_size().columns - 60))
        return "\n".join(status_report(doc, base, width))

    errors = (httpx.HTTPError, ValueError)
    with httpx.Client(timeout=args.timeout, trust_env=False) as client:
        if not args.watch:
            try:
                print(render(fetch(client)))
            except errors as exc:
                print(f"gatekeeper status: cannot read {url}: {exc}", file=sys.stderr)
                print("is gatekeeper running? is --admin right?", file=sys.stderr)
                return 1
            return 0
        # --watch: a live view, redrawn each second; survives gatekeeper restarts.
        tty = sys.stdout.isatty()
        try:
            while True:
                try:
                    frame = render(fetch(client))
                except errors as exc:
                    frame = f"gatekeeper at {base}: unreachable ({exc}); retrying every second"
                stamp = time.strftime("%H:%M:%S")
                if tty:  # home + clear screen, then the frame: no scrolling, no flicker
                    print("\x1b[H\x1b[2J" + frame + f"\n\n{stamp}  Ctrl-C to stop", flush=True)
                else:
                    print(f"--- {stamp}\n{frame}", flush=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            print()
            return 0
