#!/usr/bin/env python3
"""haproxy.cfg for N boxes, from the two-box file next to this script.

    python3 deploy/haproxy/render.py a=10.0.0.11 b=10.0.0.12 c=10.0.0.13:2 > haproxy.cfg

Each argument is ``<box_id>=<host>[:<slots>]`` (slots default 1: the box's
admission.max_in_flight). Ports are gatekeeper's defaults (public 8080, admin
9090, agent 9100); ``--ports PUBLIC,ADMIN,AGENT`` per box is for tests. The lines
marked ``# BOX a`` are the template of one box; ``# BOX b`` lines are the example
second box and are dropped. The end-to-end test and bench/boxes.py render the
shipped file with this, so what ships is what is tested. Standard library only.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).with_name("haproxy.cfg")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # gatekeeper's box_id


@dataclass(frozen=True)
class Box:
    name: str  # box_id and HAProxy server name
    host: str
    slots: int = 1
    public: int = 8080
    admin: int = 9090
    agent: int = 9100


def _one(line: str, b: Box, guard_prefix: str) -> str:
    line = line.replace("guard_a", f"guard_{b.name}").replace("gk-guard-a", guard_prefix + b.name)
    line = line.replace("server a ", f"server {b.name} ").replace("be_pass/a", f"be_pass/{b.name}")
    line = line.replace("be_job_a", f"be_job_{b.name}").replace("# BOX a", f"# BOX {b.name}")
    line = line.replace("10.0.0.11:8080", f"{b.host}:{b.public}")
    line = line.replace("addr 10.0.0.11 port 9090", f"addr {b.host} port {b.admin}")
    line = line.replace(
        "agent-addr 10.0.0.11 agent-port 9100", f"agent-addr {b.host} agent-port {b.agent}"
    )
    return line.replace(" maxconn 1 ", f" maxconn {b.slots} ")


def render(
    boxes: list[Box], *, bind: str = ":80", guard_prefix: str = "gk-guard-", text: str | None = None
) -> str:
    """The shipped file with one copy of each ``# BOX a`` run of lines per box."""
    if not boxes or len({b.name for b in boxes}) != len(boxes):
        raise ValueError("need at least one box, with distinct names")
    for b in boxes:
        if not _NAME.fullmatch(b.name):
            raise ValueError(f"box name {b.name!r} is not a box_id ([a-z0-9-], 1-32)")
    lines = (SHIPPED.read_text() if text is None else text).splitlines()
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        for b in boxes:
            out.extend(_one(x, b, guard_prefix) for x in run)
        run.clear()

    for line in lines:
        if line.rstrip().endswith("# BOX a"):
            run.append(line)
            continue
        if run and line.strip() == "" and len(run) > 1:
            # A block (a guard or a backend) ends with a blank line: keep them apart.
            run.append("")
            continue
        if line.rstrip().endswith("# BOX b"):
            continue
        flush()
        out.append(line)
    flush()
    text_out = "\n".join(out)
    text_out = text_out.replace("bind :80\n", f"bind {bind}\n")
    return re.sub(r"\n{3,}", "\n\n", text_out) + "\n"


def main(argv: list[str]) -> int:
    boxes = []
    for arg in argv:
        name, _, where = arg.partition("=")
        host, _, slots = where.partition(":")
        if not name or not host:
            print(f"usage: {sys.argv[0]} box_id=host[:slots] ...", file=sys.stderr)
            return 2
        boxes.append(Box(name, host, int(slots or 1)))
    try:
        sys.stdout.write(render(boxes))
    except ValueError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
