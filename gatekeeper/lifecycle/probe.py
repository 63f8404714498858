"""A light periodic probe of the upstream: is the engine answering at all?

Any HTTP answer, even a 404 or a 500, means the engine process is up and
serving; only a failure to connect or a timeout counts as down. httpx, not
aiohttp: this is one of gatekeeper's own low-rate calls, off the proxy path,
and it must not queue behind a 15-minute generation in the proxy's pools.

The verdicts live on the gate (``Gate.engine_up``, which admission reads):
``engine_verdict`` records the probe's, ``engine_refused`` the one a refused or dropped
connection gives before the next probe.

The engine's busy signal (issue #18 §5): with ``upstream.probe.busy.pointer``
set, the probe's answer is read as JSON and the value at the pointer compared
with ``equals`` (``busy_of``, pure); ``engine_busy`` hands it to the gate, where
it ends the hold on an engine that a previous process left computing
(``Gate.hold_orphan``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gatekeeper.config import Config, Engine, ProbeBusy
from gatekeeper.core.admission import Gate
from gatekeeper.observability.logs import redact_url

log = logging.getLogger("gatekeeper.probe")


def engine_verdict(gate: Gate, engine: str, up: bool) -> None:
    """One engine's probe verdict (``gatekeeper_engine_up`` reads it at scrape time).

    A verdict that changes the set of engines that may take a job wakes the
    waiting room: a job may now start on the engine that came back, or that a
    probe has just seen up for the first time (a queued job waits for that).
    """
    before = gate.engine_up.get(engine)
    gate.engine_up[engine] = up
    if before is not True and up and gate.on_free is not None:
        gate.on_free()


def engine_refused(gate: Gate, engine: str, gone: bool) -> None:
    """A generation sent to ``engine`` failed; ``gone``: the failure is a verdict on the
    engine (``UpstreamError.engine_gone``: it refused the connection, or closed or reset
    one it had accepted, as a crashed process does). Such an engine is down from now,
    not from its next probe (issue #11 §1). Until then the gate would send it every
    next job (it is the least loaded: nothing runs there, its generation just ended),
    and each would fail in milliseconds while another engine idled; a crash would
    empty the waiting room into 502s. The probe's next answer says up again (and
    wakes the waiting room). Any other failure (a timeout, an error status) is not a
    verdict on the engine: a live engine can time out one song.
    """
    if not gone or gate.engine_up.get(engine) is False:
        return
    gate.engine_up[engine] = False
    log.warning("engine %s dropped or refused a generation: down until its probe answers", engine)


def engine_busy(gate: Gate, engine: str, busy: bool | None) -> None:
    """The engine's own busy signal (None: none). An engine now known idle that a
    previous process left computing takes generations again: wake the waiting room."""
    if gate.engine_busy(engine, busy) and gate.on_free is not None:
        log.info("engine %s reports idle: the generation left running there has ended", engine)
        gate.on_free()


_MISSING = object()


def _at(doc: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or ``_MISSING``."""
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            return _MISSING
    return doc


def busy_of(rule: ProbeBusy, body: bytes) -> bool | None:
    """The busy signal in a probe's answer: True/False, None when the rule is off or the
    answer does not carry it (not JSON, no such pointer)."""
    if not rule.pointer:
        return None
    try:
        value = _at(json.loads(body), rule.pointer)
    except ValueError:
        return None
    if value is _MISSING:
        return None
    # Strict: true is not 1 (Python's True == 1), numbers compare as numbers.
    if isinstance(value, bool) or isinstance(rule.equals, bool):
        return type(value) is type(rule.equals) and value == rule.equals
    return bool(value == rule.equals)


@dataclass(frozen=True)
class Verdict:
    up: bool
    busy: bool | None = None  # the engine's busy signal (None: none)


async def probe_engine(client: httpx.AsyncClient, config: Config, url: str) -> Verdict:
    """One probe of the engine at ``url``: up, and its busy signal."""
    probe = config.upstream.probe
    try:
        answer = await client.get(url + probe.path, timeout=probe.timeout)
    except httpx.HTTPError:
        return Verdict(False)
    return Verdict(True, busy_of(probe.busy, answer.content))


async def probe_once(client: httpx.AsyncClient, config: Config, url: str | None = None) -> bool:
    """One probe of ``url`` (default: the first engine's): up or not."""
    return (await probe_engine(client, config, url or config.upstream.url)).up


async def _probe(client: httpx.AsyncClient, cfg: Config, engine: Engine) -> Verdict:
    try:
        return await probe_engine(client, cfg, engine.url)
    except Exception:  # never let the probe die: readyz would freeze on its last word
        log.exception("upstream probe of engine %s failed unexpectedly", engine.name)
        return Verdict(False)


async def probe_loop(
    config: Callable[[], Config],
    publish: Callable[[str, bool], None],
    publish_busy: Callable[[str, bool | None], None] | None = None,
    first: Mapping[str, Verdict] | None = None,
) -> None:
    """Every ``upstream.probe.interval``, probe every engine at once and publish each
    verdict by engine name (and its busy signal, when the engine answered). The engine
    list is read each round, so a reload that adds or removes an engine is probed from
    the next round on.

    ``first``: the verdicts of ``first_verdicts`` (by engine name), taken as this loop's
    first round (logged and published, not probed again): a second probe right after
    them would only race the first requests for nothing, and an engine's state between
    two rounds is what its generations find (a refused connection marks it down)."""
    last: dict[str, bool] = {}
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        while True:
            cfg = config()
            engines = cfg.upstream.engines
            if first is not None and all(e.name in first for e in engines):
                verdicts = [first[e.name] for e in engines]
            else:
                verdicts = await asyncio.gather(*(_probe(client, cfg, e) for e in engines))
            first = None
            several = len(engines) > 1
            for engine, verdict in zip(engines, verdicts, strict=True):
                up = verdict.up
                if up != last.get(engine.name):
                    what = f"engine {engine.name} " if several else ""
                    (log.info if up else log.warning)(
                        "upstream %s%s is %s", what, redact_url(engine.url), "up" if up else "DOWN"
                    )
                    last[engine.name] = up
                publish(engine.name, up)
                if up and publish_busy is not None:
                    publish_busy(engine.name, verdict.busy)
            for gone in set(last) - {e.name for e in engines}:
                del last[gone]
            await asyncio.sleep(cfg.upstream.probe.interval)


async def first_verdicts(
    config: Config, publish: Callable[[str, bool], None]
) -> dict[str, Verdict]:
    """One round at start, before the waiting room starts and the listeners open: a
    queue restored from the state directory, and the first requests, are decided with
    each engine's verdict known (a queued job waits for "up": ``engines.available``),
    not in a race with the loop's first round (issue #18 §5). Silent: ``probe_loop``
    logs its own first verdicts after the startup lines, given these as its first round.
    At most ``probe.timeout``."""
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        engines = config.upstream.engines
        verdicts = await asyncio.gather(*(_probe(client, config, e) for e in engines))
    for engine, verdict in zip(engines, verdicts, strict=True):
        publish(engine.name, verdict.up)
    return {e.name: v for e, v in zip(engines, verdicts, strict=True)}
