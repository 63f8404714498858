"""Child processes: started in their own session, waited for, stopped on every way out.

One helper for everyone who runs ``gatekeeper`` subcommands (or HAProxy, nginx, ...) as
children: ``gatekeeper demo`` (an engine simulator and ``run``), the benchmarks under
``bench/`` and the real-process tests under ``tests/``. It lives in the package because
the demo ships in it; ``bench/`` and ``tests/`` import it from here.

A child gets its own session (``start_new_session``), so a Ctrl-C in the terminal
reaches the parent only, and the parent stops its children in order; and
``PYTHONUNBUFFERED=1``, so a Python child's log lines arrive as they are written (a
parent waiting for "listening on" must not wait for a buffer to fill).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gatekeeper_argv(*args: str) -> list[str]:
    """``python -m gatekeeper ARGS`` with this interpreter: the command a user runs."""
    return [sys.executable, "-m", "gatekeeper", *args]


def _limit_files(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return apply


def spawn(
    argv: list[str],
    *,
    stdout: int | IO[Any],
    stderr: int | IO[Any] = subprocess.STDOUT,
    text: bool = False,
    nofile: int | None = None,
) -> subprocess.Popen[Any]:
    """Start ``argv`` in its own session, unbuffered, stdin closed.

    ``nofile``: the child's open-file limit (e.g. systemd's usual 1,024)."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=text,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        preexec_fn=None if nofile is None else _limit_files(nofile),
    )


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0, *, signals: int = 1) -> None:
    """SIGTERM (``signals`` times, ``timeout`` each), then SIGKILL; returns when it is gone.

    A second SIGTERM tells a draining gatekeeper to stop waiting for its running songs."""
    for _ in range(signals):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class Child:
    """A child process whose output (stdout and stderr) goes to the file ``log_path``.

    ``stop`` and ``kill`` are idempotent, so a registry may call them again on the way out.
    """

    def __init__(self, argv: list[str], log_path: Path, *, nofile: int | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "w+b")  # noqa: SIM115 - lives as long as the process
        self.proc: subprocess.Popen[bytes] = spawn(argv, stdout=self._log, nofile=nofile)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        """Until the output matches the regular expression ``pattern``; returns the output.

        Raises :class:`RuntimeError` with the output if the child exits or ``timeout``
        passes first (the child is left running: the caller stops it)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            if re.search(pattern, text):
                return text
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{' '.join(self.argv)} did not print {pattern!r}"
                    f" (exit code {self.proc.poll()}):\n{text[-6000:]}"
                )
            time.sleep(0.05)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (negative: a signal)."""
        stop(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (a crash, as far as the process can tell) and close the output file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
