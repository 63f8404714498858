"""Processes the bench starts: one log file each, and every one stopped on any way out.

:class:`Services` is the registry: a section opens a :meth:`Services.scope`, starts what
it needs, and whatever it started is stopped (in reverse order) when the scope ends,
by success, a failed check, an exception or Ctrl-C; :meth:`Services.stop_all` catches
anything left on the way out of the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmdline(argv: Sequence[str]) -> str:
    """The command line as a person would type it (venv python shown as is)."""
    return shlex.join(argv)


class Service:
    """A background process: started in its own session, output to a log file.

    ``stop`` is idempotent; the registry in :class:`Services` calls it again on the way
    out, so a failure or Ctrl-C anywhere still stops every process started here.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops us in order
        )
        print(f"  $ {cmdline(argv)}", flush=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.output()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start ({pattern!r}):\n{self.output()[-3000:]}")

    def wait_for_http(self, url: str, timeout: float = 20.0, status: int = 200) -> None:
        """Poll ``url`` until it answers ``status`` (an HTTP error status counts too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == status:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == status:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {url}:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


@dataclass
class Services:
    """Every process this run started, so that all of them are stopped on any exit."""

    workdir: Path
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> Service:
        svc = Service(name, argv, self.workdir / f"{name}-{len(self.started)}.log")
        self.started.append(svc)
        return svc

    def running(self) -> list[Service]:
        return [s for s in self.started if s.proc.poll() is None]

    def stop_all(self) -> None:
        for svc in reversed(self.started):
            svc.stop()

    @contextlib.contextmanager
    def scope(self) -> Iterator[Services]:
        """Stop whatever a section started when the section ends (in reverse order)."""
        mark = len(self.started)
        try:
            yield self
        finally:
            for svc in reversed(self.started[mark:]):
                svc.stop()
