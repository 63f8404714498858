"""Helpers shared by the tests: the rules builder, real processes, and waits on events.

``rules`` builds a test's rules text from layers (one builder for every module).
``Proc`` starts ``python -m gatekeeper ...`` (the real CLI, exactly what a user
runs) on :class:`gatekeeper.cli.procs.Child` (the helper the demo and the bench use
too), waits for the line announcing it listens, and stops it with SIGTERM. Its
combined output goes to a file so a failing test can show it.
``eventually``, ``poll``, ``wait_metrics``, ``wait_output`` and ``settle`` are the
waits: a test waits for the event it is about, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from gatekeeper.cli.procs import Child, free_port, gatekeeper_argv, stop

REQUIRE_E2E = os.environ.get("GATEKEEPER_REQUIRE_E2E") == "1"


def merge(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base``: nested mappings merged key by key, any other value replaced."""
    out = dict(base)
    for k, v in layer.items():
        both = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = merge(out[k], v) if both else v
    return out


def rules(*layers: Mapping[str, Any] | str) -> str:
    """The rules text of a test: ``layers`` (mappings, or YAML text of one) merged in order
    (see :func:`merge`: the last layer wins). A module keeps its base settings as a mapping
    and each test adds what it is about, e.g. ``rules(BASE, ADMIT_ROUTES, {"limits": ...})``.

    CPU and memory: ``start_gatekeeper`` reads them from a calm file unless a layer sets
    ``admission.resources`` (see :func:`calm_resources` and :func:`resources_file`)."""
    doc: dict[str, Any] = {}
    for layer in layers:
        doc = merge(doc, (yaml.safe_load(layer) or {}) if isinstance(layer, str) else layer)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def resources_file(readings: Path) -> dict[str, Any]:
    """A rules layer: CPU and memory from the file ``readings``, written calm unless it
    exists (a test heats it by writing it)."""
    if not readings.exists():
        readings.write_text('{"cpu_percent": 5, "memory_percent": 5}')
    return {"admission": {"resources": {"source": "file", "file": str(readings)}}}


# /batch-generate as it was shipped before batch routes (issue #20 §3): blocked, 410.
BATCH_BLOCKED = {
    "name": "batch-generate",
    "match": {"methods": ["POST"], "path": "/batch-generate/**"},
    "action": "block",
    "status": 410,
    "detail": "Batch generation is disabled: one song takes 5-15 minutes and the whole"
    " machine; generate songs one at a time.",
}


def _admit_routes() -> str:
    """The shipped routes with /generate as an ``admit`` route (no free slot: 503 busy at
    once). Tests about admit semantics append this to their rules; the shipped default
    is ``queue`` (the waiting room), which has its own tests. A batch route's items need
    a queue route, so with /generate admitted /batch-generate is blocked (410) again."""
    shipped = yaml.safe_load(
        (Path(__file__).parent.parent / "gatekeeper" / "rules.yaml").read_text("utf-8")
    )
    routes = [
        {**r, "action": "admit"}
        if r["name"] == "generate"
        else BATCH_BLOCKED
        if r["action"] == "batch"
        else r
        for r in shipped["routes"]
    ]
    assert any(r["action"] == "admit" for r in routes)
    return "\n" + yaml.safe_dump({"routes": routes}, allow_unicode=True, sort_keys=False)


ADMIT_ROUTES = _admit_routes()


def find_binary(name: str, *candidates: str) -> str:
    """Path of a system binary; skip the test if missing, fail when CI requires it."""
    for cand in (name, *candidates):
        executable = os.path.isabs(cand) and os.access(cand, os.X_OK)
        path = shutil.which(cand) or (cand if executable else None)
        if path:
            return path
    msg = f"{name} not installed (apt-get install it; .ci/run does)"
    if REQUIRE_E2E:
        pytest.fail(msg + " and GATEKEEPER_REQUIRE_E2E=1")
    pytest.skip(msg)


def raise_fd_limit(needed: int) -> None:
    """Raise this process's open-file limit (children inherit it) or skip/fail the test."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        msg = f"needs {needed} open files, hard limit is {hard}"
        if REQUIRE_E2E:
            pytest.fail(msg)
        pytest.skip(msg)
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Proc(Child):
    """A running ``gatekeeper`` subcommand (or, with ``program``, any command), ready.

    The constructor returns once the output matches ``ready`` (the line announcing it
    listens); a process that exits or stays silent for ``timeout`` is killed and the
    test fails with its output."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        *,
        ready: str,
        timeout: float = 20.0,
        nofile: int | None = None,
        program: list[str] | None = None,
    ):
        """``nofile``: the process's open-file limit (e.g. systemd's usual 1,024).
        ``program``: what runs ``args`` instead of ``python -m gatekeeper`` (a test app)."""
        self.args = args
        super().__init__([*(program or gatekeeper_argv()), *args], log_path, nofile=nofile)
        try:
            self.lines = self.wait_for(ready, timeout).splitlines()
        except RuntimeError:
            self.kill()
            raise

    def url_after(self, label: str) -> str:
        m = re.search(re.escape(label) + r"\s+(http://[0-9.:\[\]]+)", self.output())
        assert m, f"no {label!r} line in output:\n{self.output()}"
        return m.group(1)

    def stop(self, timeout: float = 15.0) -> int | None:
        return super().stop(timeout)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: any process a test started."""
    stop(proc, timeout)


def start_engine(tmp_path: Path, *extra: str, seconds: float = 1.0) -> tuple[Proc, str]:
    port = free_port()
    p = Proc(
        [
            "engine-sim",
            "--listen",
            f"127.0.0.1:{port}",
            "--seconds",
            str(seconds),
            "--no-cpu",
            "--memory-mb",
            "1",
            *extra,
        ],
        tmp_path / f"engine-{port}.log",
        ready=r"listening on http://",
    )
    return p, f"http://127.0.0.1:{port}"


def calm_resources(rules: str, readings: Path) -> str:
    """Rules that take CPU/memory from a calm readings file unless they choose a source.

    On a 2-core machine running this suite, real CPU often exceeds the default 90 %
    reject threshold, and admission would (rightly) refuse the very generation a test
    is about. Tests about resources set ``admission.resources`` themselves.
    """
    data = yaml.safe_load(rules) or {}
    admission = data.setdefault("admission", {}) or {}
    data["admission"] = admission
    resources = admission.setdefault("resources", {}) or {}
    admission["resources"] = resources
    if "source" in resources:
        return rules
    readings.write_text('{"cpu_percent": 5, "memory_percent": 5}')
    resources.update({"source": "file", "file": str(readings)})
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def start_gatekeeper(
    tmp_path: Path, rules: str, upstream: str | None, *extra: str, nofile: int | None = None
) -> tuple[Proc, str, str]:
    """Write ``rules`` to a file and run ``gatekeeper run``; returns (proc, proxy, admin URLs).

    ``upstream`` None: no ``--upstream`` (the rules list ``upstream.engines``)."""
    port, admin = free_port(), free_port()
    cfg = tmp_path / f"rules-{port}.yaml"
    cfg.write_text(calm_resources(rules, tmp_path / f"calm-{port}.json"))
    p = Proc(
        [
            "run",
            "--config",
            str(cfg),
            *(("--upstream", upstream) if upstream is not None else ()),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            *extra,
        ],
        tmp_path / f"gatekeeper-{port}.log",
        ready=r"admin listening on http://",
        nofile=nofile,
    )
    return p, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value (assert on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def settle(turns: int = 10) -> None:
    """Let every task that is ready run until it waits again, without wall-clock time.

    asyncio runs ready callbacks in FIFO order, so a task woken before this call has run
    its next step (to its next ``await``) when this returns; ``turns`` covers a short
    chain of such wake-ups. The barrier for "X has NOT happened" checks of in-process
    code: nothing that could make X happen is left ready to run."""
    for _ in range(turns):
        await asyncio.sleep(0)


def metric(text: str, sample: str, default: float | None = None) -> float:
    """The value of one sample (``name`` or ``name{labels}`` as printed) in a /metrics
    text; ``default`` when it is absent (none: the sample must be there)."""
    m = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.M)
    if m is None and default is not None:
        return default
    assert m, f"no sample {sample}"
    return float(m.group(1))


async def wait_metrics(admin: str, ok: Callable[[str], bool], timeout: float = 10.0) -> str:
    """Poll ``admin``'s /metrics until ``ok(text)``; returns that text."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(admin + "/metrics") as r:
                text = await r.text()
            if ok(text):
                return text
            assert time.monotonic() < deadline, f"metrics never satisfied the condition:\n{text}"
            await asyncio.sleep(0.05)


async def wait_output(proc: Proc, text: str, timeout: float = 5.0) -> None:
    """Until ``text`` is in the process's output (its log line written and flushed)."""
    assert await eventually(lambda: text in proc.output(), timeout), proc.output()


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Await ``check()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def send_generation(base_url: str, body: dict[str, object]) -> asyncio.StreamWriter:
    """POST /generate over a raw socket and return the writer, so a test can vanish."""
    import json

    host, port = base_url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    return writer


def connections_closed(server: TestServer) -> bool:
    """The aiohttp test ``server`` has seen every client connection it holds close."""
    assert server.runner is not None and server.runner.server is not None
    return all(h.transport is None for h in server.runner.server.connections)


class ProductionLikeServer(TestServer):
    """aiohttp's TestServer cancels handlers when a client disconnects; ``gatekeeper run``'s
    AppRunner does not (aiohttp's default). Test what production runs."""

    def __init__(self, app: Any, *, handler_cancellation: bool = False, **runner_kwargs: Any):
        super().__init__(app)
        self._runner_kwargs = {"handler_cancellation": handler_cancellation, **runner_kwargs}

    async def _make_runner(self, **kwargs: Any) -> Any:
        return await super()._make_runner(**{**kwargs, **self._runner_kwargs})


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``directory`` (created) for the block, then unmounted.
    Needs root (mount): skips without it, fails when GATEKEEPER_REQUIRE_E2E=1."""
    directory.mkdir(parents=True, exist_ok=True)
    msg = None
    if os.geteuid() != 0:
        msg = "mounting a tmpfs needs root"
    else:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            msg = f"cannot mount a tmpfs: {res.stderr.strip()}"
    if msg is not None:
        if REQUIRE_E2E:
            pytest.fail(msg + " and GATEKEEPER_REQUIRE_E2E=1")
        pytest.skip(msg)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill_fs(directory: Path) -> Path:
    """Write ``directory/filler`` until its file system is full (ENOSPC); returns it."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler
