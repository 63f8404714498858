"""engine-sim: a stand-in for the SongGeneration engine, for demos and end-to-end tests.

One real song takes 5-15 minutes and loads the whole machine; this simulator behaves the
same way on a smaller scale so that the proxy can be exercised without a GPU. It is
deliberately independent of the rest of the ``gatekeeper`` package: it is the fake engine
the proxy is tested against, so it must not share code (or bugs) with it.

Run it with ``gatekeeper engine-sim`` or ``python -m gatekeeper.enginesim``; flags are
``--listen HOST:PORT`` (port 0 picks a free port), ``--seconds``, ``--memory-mb``,
``--no-cpu`` and ``--batch-size``. Once bound it prints
``engine-sim listening on http://HOST:PORT``; SIGINT/SIGTERM stop it with exit code 0.

Engine endpoints (errors are FastAPI-style JSON ``{"detail": ...}``, bad input is 422;
``WORK_ENDPOINTS`` lists the three that start generations):

``POST /generate``
    Body ``{"lyrics": str, "description": str, "seconds": float?}``. Does the work, then
    answers a WAV (16-bit PCM mono, 22050 Hz, 3 s) derived only from the lyrics, with
    ``X-Generation-Id``. Nothing, not even the status line, is sent before the work is done.
``POST /generate?stream=sse`` and ``POST /generate/stream``
    Same work, but answers at once with ``text/event-stream``: ``event: progress`` every
    0.2 s, then ``event: done`` whose data carries ``url`` (``/result/{id}``), or
    ``event: error`` if the generation failed.
``POST /batch-generate``
    Body ``{"items": [item, ...]}`` (``--batch-size`` default items if absent). Starts all
    items at once and answers ``{"results": [...]}`` when every one has finished (500,
    with the same results, if any failed).
``GET /progress``, ``GET /progress/{id}``, ``GET /progress/{id}/events``
    ``{id, state, progress, elapsed_seconds, expected_seconds, eta_seconds, ...}`` for all
    generations, one generation, or as an SSE stream until it ends (404 if unknown).
    ``expected_seconds`` is the work at full speed; ``eta_seconds`` accounts for sharing.
``GET /result/{id}``
    The WAV of a finished generation; 404 if unknown, 409 while running, 500 if failed.
``GET /download?bytes=N``
    N bytes (default 100 MiB, any size) of deterministic pseudo-random data, streamed in
    64 KiB chunks with ``Content-Length``; see :func:`download_content`.
``POST /upload``
    Reads a body of any size chunk by chunk; answers ``{"bytes": n, "sha256": hex}``.
``GET /healthz``
    ``{"status": "ok", "busy": bool, "active_generations": n}``: ``busy`` while a
    generation runs (gatekeeper's ``upstream.probe.busy`` reads it: pointer ``/busy``).

Test helpers under ``/_sim/``:

``GET /_sim/stats``
    ``{"requests": {"METHOD /path": n}, "active_generations", "completed_generations",
    "failed_generations", "peak_active_generations", "in_flight_requests",
    "peak_in_flight_requests", "last_headers"}``. Requests to ``/_sim/stats``,
    ``/_sim/reset`` and ``/_sim/finish`` are not recorded, so that looking does not
    change what is seen.
``POST /_sim/reset``
    Clears the request counts, last headers and the completed/failed/peak counters.
``POST /_sim/finish``
    Ends every running generation now, as if its work were done (each answers with its
    song as usual): ``{"finished": n}``. Tests hold songs for as long as their steps
    take, however loaded the machine, then end them instead of waiting a fixed time.
``ANY /_sim/echo[/...]``
    Echoes method, path, query string, headers as ``[name, value]`` pairs in wire order,
    and the body's length and sha256.
``GET /_sim/gzip``
    A gzip-encoded text body (``Content-Encoding: gzip``); see :func:`gzip_plain_body`.
``GET /_sim/sleep?seconds=S``
    Waits S seconds before sending anything, then a small JSON body.
``GET /_sim/stall?after=N&seconds=S&tail=M``
    Chunked body: headers and N bytes, a stall of S seconds, then M more bytes and the end.
``GET /_sim/abort?after=N&length=L``
    Announces ``Content-Length: L`` (default N + 64 KiB), sends N bytes, then aborts the TCP
    connection.
``GET /_sim/headers``
    A response carrying hop-by-hop headers (``Connection: X-Hop, keep-alive``, ``X-Hop``,
    ``Keep-Alive``, ``Proxy-Authenticate``, ``Trailer``, ``Upgrade``) and end-to-end ones
    (``X-End``, two ``Set-Cookie``, ``Cache-Control: no-store``).
``GET /_sim/sse?events=N&interval=S``
    N ``event: tick`` SSE events spaced S seconds apart.

How the load is simulated: every generation needs ``seconds`` of work at full speed, and
the running generations share the engine equally (processor sharing), so two at once take
about twice as long each. Unless ``--no-cpu``, each generation runs a worker process
that spins a CPU core and holds ``--memory-mb`` of touched memory until it finishes;
with ``--no-cpu`` the memory is held in the server instead.

Modules, imports pointing downward (nothing here imports the rest of ``gatekeeper``)::

    cli      -> app, flags, config      serve until a signal (``main``)
    flags                               the command-line flags (argparse only)
    app      -> api, testkit, engine    the route table, middleware, WORK_ENDPOINTS
    api      -> engine, wire, state     the engine's endpoints (generate, progress, ...)
    testkit  -> content, wire, state    the ``/_sim/`` helpers
    state    -> engine                  the app keys and the request statistics
    wire                                JSON errors, query parsing, SSE framing
    engine   -> config, content         generations under processor sharing, workers
    content                             the WAV, the download pattern, the gzip body
    config                              SimConfig
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gatekeeper.enginesim.app import WORK_ENDPOINTS, create_app
    from gatekeeper.enginesim.cli import main
    from gatekeeper.enginesim.config import SimConfig
    from gatekeeper.enginesim.content import download_content, gzip_plain_body, synthesize_wav
    from gatekeeper.enginesim.flags import add_arguments

__all__ = [
    "WORK_ENDPOINTS",
    "SimConfig",
    "add_arguments",
    "create_app",
    "download_content",
    "gzip_plain_body",
    "main",
    "synthesize_wav",
]

# Each public name is imported from its module on first use. ``gatekeeper``'s parser calls
# add_arguments for every command, and this keeps that to the argparse-only ``flags``:
# ``gatekeeper run`` and ``check`` never load the simulator itself.
_MODULE_OF = {
    "WORK_ENDPOINTS": "app",
    "SimConfig": "config",
    "add_arguments": "flags",
    "create_app": "app",
    "download_content": "content",
    "gzip_plain_body": "content",
    "main": "cli",
    "synthesize_wav": "content",
}


def __getattr__(name: str) -> object:
    try:
        module = _MODULE_OF[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups no longer come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
