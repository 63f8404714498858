"""What the bench measures and compares against, each started with a generated config.

- :func:`nginx`: the origin of the passthrough figures (a 512-byte static file) and the
  cheapest possible "no": ``location = /generate { return 503 ...; }``.
- :func:`haproxy`: a production proxy in front of the same origin, and its own
  ``http-request return status 503`` as a second rejection baseline.
- :func:`bare_proxy`: ``bench/bare_proxy.py``, the floor for any aiohttp proxy.
- :func:`gatekeeper`: ``gatekeeper run`` with :data:`BENCH_RULES`; :func:`gatekeeper_engines`:
  the same with ``upstream.engines`` (section h).
- :func:`engine` / :func:`cpu_engine`: ``gatekeeper engine-sim`` and
  ``bench/cpu_engine.py`` (a generation that is a fixed amount of CPU work).

nginx and HAProxy run one worker process / one thread, like gatekeeper's one event loop.
Every config, pid file and log lives in the run's temp dir.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.procs import Service, Services
from gatekeeper.cli.procs import free_port

PYTHON = sys.executable
BENCH_DIR = Path(__file__).resolve().parent
UNIT = BENCH_DIR.parent / "deploy" / "systemd" / "gatekeeper.service"
SMALL_FILE_BYTES = 512
SMALL_PATH = "/small.json"
# The body every baseline rejects with: gatekeeper's answer is about this size.
REJECT_BODY = '{"detail":"engine busy","reason":"busy","retry_after":5}'

# Only what differs from the packaged defaults. The readings file pins admission's
# CPU/memory view at 5 %: on 2 cores the load generator alone drives the real CPU over
# 90 %, and these figures are about the proxy, not about the hysteresis.
BENCH_RULES = """\
upstream:
  passthrough:
    limits:
      max_connections: 64
      max_keepalive_connections: 32
admission:
  max_in_flight: 1
  resources:
    source: file
    file: {readings}
shutdown:
  drain_timeout: 0s
  linger: 0s
# Sections a-e measure the admit path (a flood is rejected at once); f, the waiting room,
# asks for action "queue".
routes:
  - name: generate
    match: {{methods: [POST], path: /generate/**}}
    action: {action}
  - name: batch-generate
    match: {{methods: [POST], path: /batch-generate/**}}
    action: block
    status: 410
"""


def nginx(svcs: Services) -> tuple[Service, str]:
    """nginx, one worker, serving ``/small.json`` and rejecting ``/generate``; (service, URL)."""
    root = svcs.workdir / "nginx"
    port = free_port()
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "www" / "small.json").write_bytes(
        (b'{"status":"ok","pad":"' + b"x" * SMALL_FILE_BYTES)[: SMALL_FILE_BYTES - 2] + b'"}'
    )
    temp_paths = "\n".join(
        f"    {kind}_temp_path {root}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(
        f"""worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log {root}/access.log combined buffer=64k flush=1s;
{temp_paths}
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        root {root}/www;
        default_type application/json;
        location = /generate {{
            add_header Retry-After 5 always;
            return 503 '{REJECT_BODY}';
        }}
    }}
}}
"""
    )
    # Workers run as an unprivileged user when the bench runs as root.
    for p in (svcs.workdir, root, root / "www"):
        p.chmod(0o755)
    # -e: the startup error log too, so nothing is written under /var/log.
    argv = ["nginx", "-p", f"{root}/", "-c", f"{root}/nginx.conf", "-e", f"{root}/error.log"]
    svc = svcs.start("nginx", [*argv, "-g", "daemon off;"])
    base = f"http://127.0.0.1:{port}"
    svc.wait_for_http(base + SMALL_PATH)
    return svc, base


def haproxy(svcs: Services, upstream: str | None) -> tuple[Service, str, str]:
    """HAProxy, one thread: a ``mode http`` proxy to ``upstream`` (if given) on one port,
    and ``http-request return status 503`` on another; (service, proxy URL, reject URL)."""
    root = svcs.workdir / "haproxy"
    root.mkdir(exist_ok=True)
    reject_port = free_port()
    cfg = f"""global
    nbthread 1
    maxconn 8000

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend reject
    bind 127.0.0.1:{reject_port} backlog 1024
    http-request return status 503 content-type application/json string '{REJECT_BODY}' \
hdr Retry-After 5
"""
    proxy_url = ""
    if upstream is not None:
        port = free_port()
        host_port = upstream.removeprefix("http://").rstrip("/")
        cfg += f"""
frontend pass
    bind 127.0.0.1:{port} backlog 1024
    default_backend origin

backend origin
    http-reuse always
    server origin {host_port}
"""
        proxy_url = f"http://127.0.0.1:{port}"
    (root / "haproxy.cfg").write_text(cfg)
    svc = svcs.start("haproxy", ["haproxy", "-db", "-f", str(root / "haproxy.cfg")])
    reject_url = f"http://127.0.0.1:{reject_port}"
    svc.wait_for_http(reject_url + "/generate", status=503)
    return svc, proxy_url, reject_url


def bare_proxy(svcs: Services, upstream: str, probe_path: str) -> tuple[Service, str]:
    """bench/bare_proxy.py, the floor; returns (service, proxy URL)."""
    port = free_port()
    script = str(BENCH_DIR / "bare_proxy.py")
    argv = [PYTHON, script, "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
    svc = svcs.start("bare-proxy", argv)
    svc.wait_for_http(f"http://127.0.0.1:{port}{probe_path}")
    return svc, f"http://127.0.0.1:{port}"


def engine(svcs: Services, *extra: str) -> tuple[Service, str]:
    """``gatekeeper engine-sim`` with ``extra`` flags; (service, URL)."""
    port = free_port()
    argv = [PYTHON, "-m", "gatekeeper", "engine-sim", "--listen", f"127.0.0.1:{port}"]
    svc = svcs.start("engine-sim", [*argv, *extra])
    svc.wait_for_line(r"listening on http://")
    return svc, f"http://127.0.0.1:{port}"


def cpu_engine(svcs: Services, work_seconds: float) -> tuple[Service, str]:
    """``bench/cpu_engine.py``: one generation is ``work_seconds`` of CPU when alone."""
    port = free_port()
    script = str(BENCH_DIR / "cpu_engine.py")
    argv = [PYTHON, script, "--listen", f"127.0.0.1:{port}", "--work-seconds", f"{work_seconds:g}"]
    svc = svcs.start("cpu-engine", argv)
    svc.wait_for_line(r"listening on http://", timeout=60)
    svc.wait_for_http(f"http://127.0.0.1:{port}/healthz")
    return svc, f"http://127.0.0.1:{port}"


def shipped_nice() -> int:
    """The ``Nice=`` of the shipped systemd unit: gatekeeper's CPU weight below the engine's."""
    m = re.search(r"^Nice=(-?\d+)\s*$", UNIT.read_text(), re.M)
    return int(m.group(1)) if m else 0


def gatekeeper(
    svcs: Services,
    upstream: str,
    *,
    log_level: str = "WARNING",
    admission: str = "",
    name: str = "rules",
    args: Sequence[str] = (),
    action: str = "admit",
    nice: int = 0,
    command: Sequence[str] = ("-m", "gatekeeper"),
    paced: bool = True,
) -> tuple[Service, str]:
    """``gatekeeper run`` with the bench's rules; returns (service, proxy URL).

    ``admission`` is YAML added under :data:`BENCH_RULES`'s ``admission:`` (indented two
    spaces), written to ``<name>.yaml``; ``args`` are more command-line flags; ``nice``
    runs it under ``nice -n`` (``nice`` execs it: the service's pid is gatekeeper's);
    ``command``: what python runs instead of ``-m gatekeeper`` (``bench/loopwatch.py``);
    ``paced=False`` turns ``limits.refusal_pacing`` off (as shipped it is on), for the
    sections that measure what one refusal costs rather than what a storm costs."""
    port, admin = free_port(), free_port()
    rules = svcs.workdir / f"{name}.yaml"
    if not rules.exists():
        readings = svcs.workdir / "readings.json"
        readings.write_text(json.dumps({"cpu_percent": 5, "memory_percent": 5}))
        text = BENCH_RULES.format(readings=readings, action=action)
        text = text.replace("admission:\n", "admission:\n" + admission, 1)
        if not paced:
            text += "limits:\n  refusal_pacing: {rate: 0}\n"
        rules.write_text(text)
    argv = ["nice", "-n", str(nice)] if nice else []
    argv += [PYTHON, *command, "run", "--config", str(rules)]
    argv += ["--upstream", upstream, "--listen", f"127.0.0.1:{port}"]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", "--log-level", log_level, *args]
    svc = svcs.start("gatekeeper", argv)
    svc.wait_for_line(r"admin listening on http://")
    return svc, f"http://127.0.0.1:{port}"


# Section h: the same rules with ``upstream.engines`` instead of ``--upstream``, so
# ``admission.max_in_flight`` (their sum) is not set; the generate route is ``queue``.
ENGINES_RULES = """\
upstream:
  probe: {{interval: {probe}s, timeout: {probe}s}}
  engines:
{engines}
admission:
  on_client_disconnect: cancel
  queue: {{max_waiting: 50, per_client: 50, max_wait: 1h}}
  resources:
    source: file
    file: {readings}
shutdown:
  drain_timeout: 0s
  linger: 0s
routes:
  - name: generate
    match: {{methods: [POST], path: /generate/**}}
    action: queue
"""


def gatekeeper_engines(
    svcs: Services,
    engines: Sequence[tuple[str, str]],
    *,
    probe_interval: float,
    name: str,
    log_level: str = "WARNING",
) -> tuple[Service, str, str]:
    """``gatekeeper run`` with ``upstream.engines`` = ``engines`` (name, URL; one slot
    each) and no ``--upstream``; ``--state-dir`` in the temp dir; (service, proxy, admin)."""
    port, admin = free_port(), free_port()
    readings = svcs.workdir / "readings.json"
    readings.write_text(json.dumps({"cpu_percent": 5, "memory_percent": 5}))
    listed = "\n".join(f'    - {{name: {n}, url: "{u}", max_in_flight: 1}}' for n, u in engines)
    rules = svcs.workdir / f"{name}.yaml"
    rules.write_text(
        ENGINES_RULES.format(probe=f"{probe_interval:g}", engines=listed, readings=readings)
    )
    argv = [PYTHON, "-m", "gatekeeper", "run", "--config", str(rules)]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
    argv += ["--log-level", log_level, "--state-dir", str(svcs.workdir / f"state-{name}")]
    svc = svcs.start("gatekeeper", argv)
    svc.wait_for_line(r"admin listening on http://")
    return svc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
