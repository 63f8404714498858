"""``gatekeeper demo``: an engine simulator behind a real gatekeeper, and a live status line.

The demo runs two children (``engine-sim`` and ``run``), exactly the commands a user
would type, on rules generated from the user's file with ``admission.expected_seconds``
set to the simulator's song length, so the first song's ``Retry-After`` and ETA are
honest from the start instead of the real engine's 600 s.

Everything the children print is relayed through :class:`LiveLine`: on a terminal the
status line is redrawn in place and every log line is written *above* it (the live
line cleared first, redrawn after), so neither breaks the other.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

import yaml

from gatekeeper.cli.procs import gatekeeper_argv, spawn, stop
from gatekeeper.config import load_config_file

CLEAR_LINE = "\r\x1b[K"  # carriage return + erase to end of line (ECMA-48 EL)


def _terminal_width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns or shutil.get_terminal_size().columns  # a pty without a size says 0


class LiveLine:
    """One status line redrawn in place, with other lines printed above it.

    ``show`` replaces the live line; ``above`` prints a whole line (a child's log line)
    without corrupting it. The live line is cut to the terminal width: a wrapped line
    cannot be redrawn with ``\\r``. Not a terminal: nothing is redrawn, ``show`` is the
    caller's business (it prints whole lines) and ``above`` passes lines through.
    Thread-safe: the relays of the children's output call ``above`` from their threads.
    """

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        width: Callable[[], int] | None = None,
    ) -> None:
        self.out, self.err = out, err
        self.tty = out.isatty()
        # Clearing and redrawing only matters when both streams reach the same screen.
        self._shared = self.tty and err.isatty()
        self._width = width or (lambda: _terminal_width(out))
        self._line = ""
        self._lock = threading.Lock()

    def _draw(self) -> None:
        self.out.write(CLEAR_LINE + self._line[: max(1, self._width() - 1)])
        self.out.flush()

    def show(self, line: str) -> None:
        with self._lock:
            self._line = line
            self._draw()

    def above(self, text: str) -> None:
        with self._lock:
            if self._shared and self._line:
                self.out.write(CLEAR_LINE)
                self.out.flush()
            self.err.write(text.rstrip("\n") + "\n")
            self.err.flush()
            if self._shared and self._line:
                self._draw()

    def end(self) -> None:
        """Leave the live line on screen and move below it, for a final message."""
        with self._lock:
            if self.tty and self._line:
                self.out.write("\n")
                self.out.flush()
            self._line = ""


# gatekeeper runs at INFO under the demo so that good news shows (a resource or the engine
# recovered, a reload applied: INFO by design); its other INFO lines (one access line per
# request, the startup summary) would bury the live line, so only these loggers' show.
SHOWN_INFO_LOGGERS = frozenset({"gatekeeper.monitor", "gatekeeper.probe", "gatekeeper.reload"})


def shown(line: str) -> bool:
    """Whether the demo shows a line of gatekeeper's text log: WARNING and above, INFO of
    ``SHOWN_INFO_LOGGERS``; a line that is not a log line (a traceback) always."""
    parts = line.split(None, 3)
    if len(parts) < 3 or parts[1] not in ("DEBUG", "INFO"):
        return True
    return parts[1] == "INFO" and parts[2] in SHOWN_INFO_LOGGERS


def relay(
    stream: IO[str], live: LiveLine, keep: Callable[[str], bool] = lambda line: True
) -> threading.Thread:
    """A daemon thread writing each line of a child's ``stream`` that ``keep`` accepts
    above the live line."""

    def pump() -> None:
        with contextlib.suppress(OSError, ValueError):  # the child or our terminal went away
            for line in stream:
                if keep(line):
                    live.above(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def demo_rules(text: str, seconds: float, source: str) -> str:
    """The rules ``text`` with ``admission.expected_seconds`` set to the simulated song length.

    The real engine's 600 s would make the demo's first ``Retry-After`` and ETA ten times
    too long; with the simulator's length they are right from the first song.
    """
    data: dict[str, Any] = yaml.safe_load(text) or {}
    data["admission"] = {**(data.get("admission") or {}), "expected_seconds": seconds}
    header = f"# generated by `gatekeeper demo` from {source}: expected_seconds = --seconds\n"
    return header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _spawn(
    argv: list[str],
    expect: str,
    live: LiveLine,
    timeout: float = 20.0,
    keep: Callable[[str], bool] = lambda line: True,
) -> subprocess.Popen[str]:
    """Start a child, relay its stderr at once, wait for the line announcing it listens."""
    # Its own session: Ctrl-C reaches the demo only, and the demo stops the children.
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    errors = relay(proc.stderr, live, keep)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if expect in line:
            relay(proc.stdout, live)  # keep draining: a full pipe would block the child
            return proc
    _stop(proc)
    errors.join(timeout=2.0)  # the child's own reason (e.g. address in use) comes first
    raise RuntimeError(f"`{' '.join(argv[2:4])}` did not start (exit code {proc.poll()})")


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, a second one after 5 s (a draining gatekeeper stops waiting), then SIGKILL."""
    stop(proc, timeout=5.0, signals=2)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _let_gatekeeper_drain(gk: subprocess.Popen[str]) -> None:
    """One SIGTERM: gatekeeper drains, the running song finishes and its client gets it
    (bounded by ``shutdown.drain_timeout``). A second Ctrl-C (or SIGTERM/SIGHUP) while it
    waits is passed on as gatekeeper's second signal: exit now, abandoning the song."""
    if gk.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        gk.send_signal(signal.SIGTERM)
    try:
        gk.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            print("demo: second signal: stopping now", file=sys.stderr, flush=True)


def _stop_all(children: list[subprocess.Popen[str]], *, drain: bool = False) -> None:
    """Stop the children, newest first, not to be interrupted by a further signal.

    ``drain``: gatekeeper (the newest) first gets one SIGTERM and all the time its drain
    takes, so one Ctrl-C mid-song does not lose the song; a second Ctrl-C cuts it short.
    A closed terminal sends SIGHUP and often SIGTERM after it; either, raised in the
    middle of the rest, would leave the children running. That wait is bounded by ``_stop``.
    """
    if drain and children:
        _let_gatekeeper_drain(children[-1])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    for child in reversed(children):
        _stop(child)


SONG_REQUEST = '{"lyrics": "[verse] 海风吹过夏天的街", "description": "pop, piano, 90 bpm"}'
SONG_REQUEST_2 = '{"lyrics": "[verse] 山间的小路", "description": "folk, guitar, 80 bpm"}'


def curl_generate(url: str, output: str, request: str = SONG_REQUEST) -> str:
    """The copy-paste generation command. ``--fail-with-body`` (curl >= 7.76): a 503 exits
    22 so ``&& ls`` does not run, and its JSON answer stays readable in ``output``."""
    return (
        f"curl -sS --fail-with-body -X POST {url}/generate -H 'Content-Type: application/json' \\\n"
        f"       -d '{request}' \\\n"
        f"       -o {output} -D - && ls -l {output}"
    )


def curl_async(url: str) -> str:
    """The copy-paste async submission: 202 with Location and the job's JSON."""
    return (
        f"curl -sS -X POST {url}/generate -H 'Prefer: respond-async' "
        f"-H 'Content-Type: application/json' \\\n"
        f"       -d '{SONG_REQUEST_2}'"
    )


def banner(args: argparse.Namespace, url: str, admin: str, engine: str) -> str:
    return f"""
gatekeeper demo: an engine simulator ({args.seconds:g}s per song) behind gatekeeper.

  frontend URL (point your frontend here):  {url}
  status page / metrics / status JSON:      http://{admin}/  /metrics  /status
  engine simulator (direct, bypassing):     http://{engine}

Generate a song (copy-paste):

  {curl_generate(url, "song1.wav")}

While it runs, in a second terminal: another song waits its turn (its connection held,
the frontend unchanged) and arrives when the first one is done; the first command run
again instead attaches to the running song (X-Gatekeeper-Coalesced: 1, no second run):

  {curl_generate(url, "song2.wav", SONG_REQUEST_2)}

Or submit it as an async job (RFC 7240) and come back for it, as a batch frontend does
for each of its songs (202 at once; GET it for position and ETA; the result when done):

  {curl_async(url)}
  curl -sS {url}/_gatekeeper/jobs/<id>            # state, position, eta_seconds
  curl -sS -N {url}/_gatekeeper/jobs/<id>/events  # the same as SSE, until it ends
  curl -sS -o song3.wav {url}/_gatekeeper/jobs/<id>/result

The demo's rules set admission.expected_seconds to {args.seconds:g}s (the real engine's
default is 600 s); after each song the estimate follows the measured durations.

A batch, as the engine's own batch body: one async job per song, each taking its turn
(202 + Location; GET it for n of N done and each song's link; docs/batch.md):

  curl -sS -X POST {url}/batch-generate -H 'Content-Type: application/json' \\
    -d '{{"items": [{{"lyrics": "[verse] one"}}, {{"lyrics": "[verse] two"}}]}}'
  curl -sS {url}/_gatekeeper/jobs/batches/<id>    # n of N done; .../results?format=tar

Live status (Ctrl-C to stop):
"""


def run(args: argparse.Namespace, config: str) -> int:
    """The ``demo`` command on the rules file ``config``; returns the exit code."""
    # httpx (the status loop's client) is imported here, not in _watch: a Ctrl-C that lands
    # in the middle of an import comes out of it as a RuntimeError (a dataclass's
    # __set_name__ wraps it), not the KeyboardInterrupt that drains, and the song was lost.
    import httpx  # noqa: F401

    from gatekeeper.cli.status_view import status_line

    load_config_file(config)  # fail here, with every problem listed, not in a child
    live = LiveLine(sys.stdout, sys.stderr)
    host = "127.0.0.1"
    engine = f"{host}:{args.engine_port}"
    public = f"{host}:{args.port}"
    admin = f"{host}:{args.admin_port}"
    children: list[subprocess.Popen[str]] = []
    # A closed terminal (SIGHUP) or a plain `kill` must stop the children too.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    with tempfile.TemporaryDirectory(prefix="gatekeeper-demo-") as tmp:
        rules = Path(tmp, "rules.yaml")
        rules.write_text(
            demo_rules(Path(config).read_text(encoding="utf-8"), args.seconds, config),
            encoding="utf-8",
        )
        try:
            sim_args = ["engine-sim", "--listen", engine, "--seconds", str(args.seconds)]
            sim_args += ["--memory-mb", str(args.memory_mb)]
            children.append(_spawn(gatekeeper_argv(*sim_args), "listening", live))
            run_args = ["run", "--config", str(rules), "--upstream", f"http://{engine}"]
            run_args += ["--listen", public, "--admin-listen", admin, "--log-level", "INFO"]
            run_args += ["--log-format", "text"]  # what ``shown`` reads
            children.append(_spawn(gatekeeper_argv(*run_args), "admin listening", live, keep=shown))
        except RuntimeError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            print(
                "demo: is a port in use? choose others with --port, --admin-port, --engine-port",
                file=sys.stderr,
            )
            _stop_all(children)
            return 1
        except KeyboardInterrupt:
            _stop_all(children)
            return 0
        drain = False
        try:
            print(banner(args, f"http://{public}", admin, engine), flush=True)
            return _watch(args, children[-1], f"http://{admin}/status", live, status_line)
        except KeyboardInterrupt:
            drain = True
            with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
                live.end()
                print(
                    "demo: stopping; a running song finishes first and reaches its client "
                    "(Ctrl-C again to stop at once)",
                    flush=True,
                )
            return 0
        finally:
            _stop_all(children, drain=drain)


def _watch(
    args: argparse.Namespace,
    gk: subprocess.Popen[str],
    status_url: str,
    live: LiveLine,
    status_line: Callable[[dict[str, Any]], str],
) -> int:
    import httpx

    last_print = 0.0
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while gk.poll() is None:
            try:
                line = status_line(client.get(status_url).json())
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                line = f"(status unavailable: {exc})"
            if live.tty:
                live.show(line)
            elif time.monotonic() - last_print >= args.log_every:
                print(line, flush=True)
                last_print = time.monotonic()
            time.sleep(1.0)
    live.end()
    if gk.returncode == 0:  # stopped cleanly by a signal from outside (kill, a supervisor)
        print("demo: gatekeeper stopped (exit code 0); stopping the demo", flush=True)
        return 0
    print(f"demo: gatekeeper exited unexpectedly (exit code {gk.returncode})", file=sys.stderr)
    return 1
