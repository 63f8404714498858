"""Shared fixtures, and the suite's tiers. Real-process helpers live in ``support.py``.

Three tiers: pure (tables, no I/O), in-process (the apps on aiohttp test servers on
127.0.0.1), and real processes (``python -m gatekeeper ...``, HAProxy, Chromium, ...).
Every real-process test is marked ``slow``, so ``pytest -m "not slow"`` runs the first
two tiers only:

- automatically, when it uses a process registry (``procs``, ``module_procs``) or any
  fixture built on one (``engine``, ``fresh_engine``, a module's ``gk``, ...): pytest's
  ``item.fixturenames`` is the whole closure of the fixtures a test uses;
- automatically, when it is marked ``e2e`` (it needs an external binary: a process);
- explicitly (``pytest.mark.slow`` on the test or the module) when it starts a process
  another way (``subprocess.run`` of the CLI, promtool, the engine's CPU worker).

A test not marked ``slow`` that starts a process anyway fails (see ``_in_process_only``),
so the fast tier cannot quietly grow a process again.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pgserver import DSN_ENV, SCHEMA_ENV, PgServer, require_pg_bin
from support import Proc, start_engine

# The fixtures that own real processes; every other real-process fixture uses one of them.
REAL_PROCESS_FIXTURES = frozenset({"procs", "module_procs"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") is not None or REAL_PROCESS_FIXTURES.intersection(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _in_process_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test of the fast tier (not ``slow``) may not start a process: it fails saying so."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(self: subprocess.Popen[Any], args: Any, *more: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args!r}) but is not marked slow:"
            " mark it (pytest.mark.slow) or use the procs fixture (tests/conftest.py)"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the session (pgserver.py); skipped without
    PostgreSQL, failed without it when GATEKEEPER_REQUIRE_E2E=1."""
    server = PgServer.start(require_pg_bin())
    yield server
    server.stop()


@pytest.fixture
def pg_schema(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh schema name on the session's server, also in the environment of the
    test's child processes (``pgserver.open_test_store`` reads it)."""
    import secrets

    schema = f"t_{secrets.token_hex(6)}"
    monkeypatch.setenv(DSN_ENV, pg_server.dsn)
    monkeypatch.setenv(SCHEMA_ENV, schema)
    return schema


def _stop_all(started: list[Proc]) -> None:
    for p in reversed(started):
        p.stop()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes appended here are stopped (SIGTERM, then kill) when the test ends."""
    started: list[Proc] = []
    yield started
    _stop_all(started)


@pytest.fixture(scope="module")
def module_procs() -> Iterator[list[Proc]]:
    """``procs`` for module-scoped fixtures: stopped when the module's tests are done."""
    started: list[Proc] = []
    yield started
    _stop_all(started)


def _engine_seconds(request: pytest.FixtureRequest) -> float:
    """A test module sets its engine-sim's default song length with ``ENGINE_SECONDS``."""
    return float(getattr(request.module, "ENGINE_SECONDS", 1.0))


@pytest.fixture(scope="module")
def engine(
    request: pytest.FixtureRequest,
    module_procs: list[Proc],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Proc, str]:
    """A real ``engine-sim`` shared by the module's tests: (process, URL)."""
    proc, url = start_engine(tmp_path_factory.mktemp("engine"), seconds=_engine_seconds(request))
    module_procs.append(proc)
    return proc, url


@pytest.fixture
def fresh_engine(
    request: pytest.FixtureRequest, procs: list[Proc], tmp_path: Path
) -> tuple[Proc, str]:
    """A real ``engine-sim`` of this test alone: its counters start at zero and no song
    of an earlier test is still running in it."""
    proc, url = start_engine(tmp_path, seconds=_engine_seconds(request))
    procs.append(proc)
    return proc, url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for real sockets: no connection limit, a fresh connection per
    request (no keep-alive reuse to confuse a test counting connections), bodies as sent
    (a gzip body stays gzip)."""
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as s:
        yield s


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def no_traceback(procs: list[Proc]) -> Iterator[None]:
    """No process of the test (engine, gatekeepers) logged a traceback (opt in with
    ``pytestmark = pytest.mark.usefixtures("no_traceback")``)."""
    yield
    for p in procs:
        assert "Traceback" not in p.output(), p.output()
