"""``jobs.store`` and ``jobs.postgres`` (issue #21): read, checked with YAML path, line and
value, the DSN never in the file, a restart to change, and ``gatekeeper check`` through the
real CLI against a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pgserver import PgServer

from gatekeeper.config import ConfigError, load_config, load_config_file
from gatekeeper.config.jobs import postgres_dsn
from gatekeeper.lifecycle.changes import keep_restart_only


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(textwrap.dedent(text))
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_the_defaults_are_sqlite_and_a_documented_postgres_section() -> None:
    """No jobs.store: SQLite; jobs.postgres has its documented defaults and no DSN."""
    jobs = load_config("").jobs
    assert jobs.store == "sqlite"
    pg = jobs.postgres
    assert (pg.dsn_env, pg.dsn_file, pg.pool_size, pg.schema, pg.timeout) == (
        None,
        None,
        4,
        "gatekeeper",
        1.0,
    )


def test_bad_values_name_their_path_and_line() -> None:
    """Each bad key is reported with its YAML path and line, all together."""
    got = problems(
        """\
        jobs:
          store: mysql
          postgres:
            dsn_env: "1-not a name"
            pool_size: 0
            schema: Bad-Name
            timeout: -1s
        """
    )
    paths = {(line, path) for line, path, _ in got}
    assert {
        (2, "jobs.store"),
        (4, "jobs.postgres.dsn_env"),
        (5, "jobs.postgres.pool_size"),
        (6, "jobs.postgres.schema"),
        (7, "jobs.postgres.timeout"),
    } <= paths


def test_postgres_needs_exactly_one_dsn_source() -> None:
    """store: postgres without dsn_env/dsn_file is an error at jobs.store; both at once too."""
    got = problems("jobs:\n  store: postgres\n")
    assert any(path == "jobs.store" and "dsn_env or" in msg for _, path, msg in got)
    got = problems("jobs:\n  store: postgres\n  postgres:\n    dsn_env: PG\n    dsn_file: secret\n")
    assert [(line, path) for line, path, _ in got] == [(5, "jobs.postgres.dsn_file")]


def test_the_dsn_comes_from_the_variable_or_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dsn_env reads the variable; dsn_file the file's first line, relative to the rules
    file; a missing one is a one-line error naming the variable or the file."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("jobs:\n  store: postgres\n  postgres: {dsn_env: GK_TEST_DSN}\n")
    cfg = load_config_file(rules)
    monkeypatch.delenv("GK_TEST_DSN", raising=False)
    with pytest.raises(ValueError, match="the variable GK_TEST_DSN is not set"):
        postgres_dsn(cfg.jobs.postgres, cfg.source)
    monkeypatch.setenv("GK_TEST_DSN", "postgresql://u@h/db")
    assert postgres_dsn(cfg.jobs.postgres, cfg.source) == "postgresql://u@h/db"
    rules.write_text("jobs:\n  store: postgres\n  postgres: {dsn_file: secrets/dsn}\n")
    cfg = load_config_file(rules)
    with pytest.raises(ValueError, match="secrets/dsn"):
        postgres_dsn(cfg.jobs.postgres, cfg.source)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "dsn").write_text("postgresql://f@h/db\n# a comment\n")
    assert postgres_dsn(cfg.jobs.postgres, cfg.source) == "postgresql://f@h/db"


def test_changing_the_store_needs_a_restart() -> None:
    """A reload that changes jobs.store or jobs.postgres keeps the running store and says
    it needs a restart."""
    running = load_config("")
    loaded = load_config("jobs:\n  store: postgres\n  postgres: {dsn_env: PG, schema: other}\n")
    kept, wanted = keep_restart_only(running, loaded)
    assert kept.jobs.store == "sqlite" and kept.jobs.postgres == running.jobs.postgres
    assert {c.key for c in wanted} == {"jobs.store", "jobs.postgres"}


# -- gatekeeper check, the real CLI --------------------------------------------------------


def gk(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=60,
    )


def _rules(tmp_path: Path, schema: str) -> None:
    (tmp_path / "rules.yaml").write_text(
        f"jobs:\n  store: postgres\n  postgres: {{dsn_env: GK_DSN, schema: {schema}}}\n"
    )


@pytest.mark.slow  # runs the CLI and PostgreSQL
def test_check_verifies_the_connection_and_the_schema_version(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """gatekeeper check connects: a schema not created yet is fine (run creates it), the
    current version is fine, a newer one is refused (exit 1), naming both versions."""
    from gatekeeper.jobs.postgres import PostgresJobStore
    from gatekeeper.jobs.postgres.schema import SCHEMA_VERSION

    _rules(tmp_path, pg_schema)
    env = {"GK_DSN": pg_server.dsn}
    res = gk("check", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert f"job store postgres: connected; schema {pg_schema} not created yet" in res.stdout
    PostgresJobStore.open(tmp_path / "state", dsn=pg_server.dsn, schema=pg_schema).close()
    res = gk("check", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert f"schema {pg_schema} at version {SCHEMA_VERSION} (current)" in res.stdout
    import asyncio

    import asyncpg

    async def bump() -> None:
        con = await asyncpg.connect(pg_server.dsn)
        await con.execute(f"UPDATE {pg_schema}.schema_version SET version = 99")
        await con.close()

    asyncio.run(bump())
    res = gk("check", cwd=tmp_path, env=env)
    assert res.returncode == 1
    assert f"at version 99, this gatekeeper knows {SCHEMA_VERSION}" in res.stdout


@pytest.mark.slow  # runs the CLI
def test_check_and_run_name_an_unreachable_store_without_its_password(tmp_path: Path) -> None:
    """Nothing listens at the DSN: check exits 1 saying it cannot connect, run exits 2
    saying it cannot open the job store; neither prints the DSN's password."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    _rules(tmp_path, "gatekeeper")
    env = {"GK_DSN": f"postgresql://u:s3cret@127.0.0.1:{port}/db"}
    res = gk("check", cwd=tmp_path, env=env)
    assert res.returncode == 1
    assert "job store postgres: cannot connect to PostgreSQL" in res.stdout
    res = gk(
        "run", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", cwd=tmp_path, env=env
    )
    assert res.returncode == 2
    assert "cannot open the job store: jobs.postgres: cannot use PostgreSQL" in res.stderr
    assert "s3cret" not in res.stdout + res.stderr
    res = gk("run", "--listen", "127.0.0.1:0", cwd=tmp_path, env={"GK_DSN": ""})
    assert res.returncode == 2
    assert "the variable GK_DSN is not set" in res.stderr
