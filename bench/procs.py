"""Processes the bench starts: one log file each, and every one stopped on any way out.

The process itself (own session, log file, SIGTERM then SIGKILL) is
:class:`gatekeeper.cli.procs.Child`, shared with the tests and ``gatekeeper demo``.

:class:`Services` is the registry: a section opens a :meth:`Services.scope`, starts what
it needs, and whatever it started is stopped (in reverse order) when the scope ends,
by success, a failed check, an exception or Ctrl-C; :meth:`Services.stop_all` catches
anything left on the way out of the run.
"""

from __future__ import annotations

import contextlib
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gatekeeper.cli.procs import Child


def cmdline(argv: Sequence[str]) -> str:
    """The command line as a person would type it (venv python shown as is)."""
    return shlex.join(argv)


class Service(Child):
    """A background process of the bench, named, its command line printed as it starts.

    ``stop`` is idempotent; the registry in :class:`Services` calls it again on the way
    out, so a failure or Ctrl-C anywhere still stops every process started here.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        super().__init__(argv, log_path)
        print(f"  $ {cmdline(argv)}", flush=True)

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> None:
        try:
            self.wait_for(pattern, timeout)
        except RuntimeError:
            raise RuntimeError(
                f"{self.name} did not start ({pattern!r}):\n{self.output()[-3000:]}"
            ) from None

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

    def stop_all(self, timeout: float = 10.0) -> None:
        for svc in reversed(self.started):
            svc.stop(timeout)

    @contextlib.contextmanager
    def scope(self) -> Iterator[Services]:
        """Stop whatever a section started when the section ends (in reverse order)."""
        mark = len(self.started)
        try:
            yield self
        finally:
            for svc in reversed(self.started[mark:]):
                svc.stop()
