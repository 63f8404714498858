"""A throwaway PostgreSQL server for the tests and benches that need a real one (issue #21).

``PgServer.start()`` runs Debian's ``initdb`` and ``pg_ctl`` (the ``postgresql``
package; ``.ci/run`` installs it) in a fresh temporary directory, listening on
127.0.0.1 on a free port and on a unix socket in that directory, with ``fsync``
off (a test server: nothing to survive a power loss). PostgreSQL refuses to run
as root: as root the server runs as the ``postgres`` user (the package creates
it) in a directory it owns. ``stop()`` stops it and deletes the directory.

``find_pg_bin`` finds the binaries (``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``); the pytest fixture skips without them, and fails
when ``GATEKEEPER_REQUIRE_E2E=1`` (``support.find_binary``'s rule).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

USER = "gatekeeper"


def find_pg_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.insert(0, Path(on_path).resolve().parent)
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "pg_ctl").is_file():
            return cand
    return None


def _major(path: Path) -> int:
    try:
        return int(path.parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """One running server; ``dsn`` connects to its ``postgres`` database as ``gatekeeper``."""

    bindir: Path
    root: Path
    port: int
    run_as: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        cmd = list(args)
        if self.run_as is not None:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")

    @classmethod
    def start(cls, bindir: Path) -> PgServer:
        root = Path(tempfile.mkdtemp(prefix="gatekeeper-pg-"))
        run_as = "postgres" if os.geteuid() == 0 else None
        if run_as is not None:
            pw = pwd.getpwnam(run_as)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        server = cls(bindir, root, _free_port(), run_as)
        try:
            server._run(
                str(bindir / "initdb"),
                "-D",
                str(server.data),
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            opts = f"-h 127.0.0.1 -p {server.port} -k {root} -c fsync=off -c full_page_writes=off"
            server._run(
                str(bindir / "pg_ctl"),
                "-D",
                str(server.data),
                "-o",
                opts,
                "-l",
                str(root / "log"),
                "-w",
                "start",
            )
        except BaseException:
            server.stop()
            raise
        return server

    def restart(self, down: float = 0.0) -> None:
        """Stop the server (fast: every session is ended), stay down ``down`` seconds, and
        start it again on the same port and data (issue #21: boxes reconnect by themselves)."""
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        time.sleep(down)
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c full_page_writes=off"
        log = str(self.root / "log")
        self._run(pg_ctl, "-D", str(self.data), "-o", opts, "-l", log, "-w", "start")

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended) and delete its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# -- the conformance suite's opener (tests/test_store_conformance.py): a child process
# (the kill -9 test) imports it by name, so it reads the server and schema from the
# environment the fixture set.
DSN_ENV = "GATEKEEPER_TEST_PG_DSN"
SCHEMA_ENV = "GATEKEEPER_TEST_PG_SCHEMA"


def open_test_store(directory: Path) -> Any:
    """A PostgresJobStore on ``directory`` and the test's server and schema."""
    from gatekeeper.jobs.postgres import PostgresJobStore

    return PostgresJobStore.open(
        directory, dsn=os.environ[DSN_ENV], schema=os.environ[SCHEMA_ENV], timeout=5.0
    )


def queued_record(
    store: Any, client: str = "c", key: str | None = None, body: bytes = b"{}"
) -> Any:
    """A new queued job's record for ``store`` (a ``POST /generate`` of ``client``), its
    body already written to the store's spool: ``store.create`` it."""
    import secrets

    from gatekeeper.jobs.record import JobRecord

    job_id = secrets.token_urlsafe(18)
    w = store.body_writer(job_id)
    w.write(body)
    return JobRecord(
        id=job_id,
        route="generate",
        client=client,
        held=False,
        method="POST",
        target="/generate",
        headers=(),
        coalesce_key=key,
        created=time.time(),
        body_size=w.commit(),
    )


@contextlib.contextmanager
def bench_server(prefix: str) -> Iterator[tuple[PgServer, Path]]:
    """For a bench run: a throwaway server and a temporary directory, both gone after it
    whatever happens; without PostgreSQL the run exits 2 saying so."""
    bindir = find_pg_bin()
    if bindir is None:
        print("PostgreSQL is not installed (apt-get install postgresql)", file=sys.stderr)
        raise SystemExit(2)
    server = PgServer.start(bindir)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield server, Path(tmp)
    finally:
        server.stop()


def require_pg_bin() -> Path:
    """The binaries' directory; skip without them, fail when CI requires them."""
    from support import REQUIRE_E2E

    found = find_pg_bin()
    if found is None:
        msg = "PostgreSQL not installed (apt-get install postgresql; .ci/run does)"
        if REQUIRE_E2E:
            pytest.fail(msg + " and GATEKEEPER_REQUIRE_E2E=1")
        pytest.skip(msg)
    return found
