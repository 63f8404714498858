"""HAProxy's agent-check protocol (issue #11 §2): this box's readiness in one line.

HAProxy connects to ``agent_listen`` every ``agent-inter``, may send a line
(``agent-send``), reads one line and closes. The answer is decided by the pure
``reply`` from plain ``Facts``; ``facts_of`` is the one adapter reading them off
the running state, and ``AgentServer`` the thin TCP listener.

The answers, first match wins (``ready`` leads every healthy answer, because an
agent's ``drain`` or ``maint`` sticks until an answer says ``ready``)::

    draining (SIGTERM)                 drain        weight 0, running sessions finish
    no engine up                       maint        out of rotation until ``ready``
    a resource over its threshold      ready 0%     nothing could start here (cpu,
                                                    memory, the PSI and GPU reasons)
    no free slot                       ready 1%     see below
    free slots                         ready P%     P = 100 * free / slots, at least 2

Why a full box answers 1 %, not 0 %: a weight of 0 takes the server out of load
balancing, and when every box is busy HAProxy would then answer "no server
available" at once instead of queueing the request (``maxconn`` + ``timeout
queue``) or handing it to a box whose waiting room (queue routes, async jobs)
can hold it. At 1 % a busy box stays a candidate of last resort: ``maxconn``
keeps held generations off it, and async submissions go to a box with a free
slot (weight ≥ 2) whenever there is one. An overloaded box would refuse the
job (``cpu``/``memory``), so it gets no new session at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gatekeeper.core.admission import Gate
from gatekeeper.core.vocab import RESOURCE_REASONS

log = logging.getLogger("gatekeeper.agent")

# How long to wait for HAProxy's optional ``agent-send`` line before answering anyway.
READ_TIMEOUT_SECONDS = 0.2
# The lowest weight a box with a free slot is given, above a full box's 1 %.
MIN_FREE_PERCENT = 2
BUSY_PERCENT = 1


@dataclass(frozen=True)
class Facts:
    """What the answer depends on, as plain values."""

    draining: bool
    slots: int  # every listed engine's max_in_flight, summed
    free: int  # slots on engines that are up (or not probed yet), not in use nor orphaned
    overloaded: tuple[str, ...]  # resource reasons now: "cpu", "memory", PSI, GPU
    any_engine_up: bool  # False only when every engine's probe said down
    waiting: int = 0  # jobs in the waiting room (not part of the answer; for the log)


def reply(f: Facts) -> str:
    """The agent-check answer for ``f``, without the line end."""
    if f.draining:
        return "drain"
    if not f.any_engine_up:
        return "maint"
    if f.overloaded:
        return "ready 0%"
    if f.free <= 0 or f.slots <= 0:
        return f"ready {BUSY_PERCENT}%"
    pct = max(MIN_FREE_PERCENT, min(100, round(100 * f.free / f.slots)))
    return f"ready {pct}%"


class Queue(Protocol):
    """The waiting room, as far as the agent's log line needs it."""

    def depth(self) -> int: ...


class Watched(Protocol):
    """What the agent reads of the running gatekeeper (the app's state is one)."""

    @property
    def gate(self) -> Gate: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def jobs(self) -> Queue | None: ...


def facts_of(st: Watched) -> Facts:
    """The running state as ``Facts``: the one place the agent reads it."""
    gate, now = st.gate, st.clock()
    slots = gate.limits.slots
    # Occupied as the gate counts it when it picks an engine: leases and orphans (a
    # generation a killed process left running is as busy as one of ours).
    free = sum(
        max(0, e.max_in_flight - gate.occupied_on(e.name, now))
        for e in slots
        if gate.engine_up.get(e.name) is not False
    )
    overloaded = tuple(r for r in gate.reasons(now) if r in RESOURCE_REASONS)
    return Facts(
        draining=gate.draining,
        slots=sum(e.max_in_flight for e in slots),
        free=free,
        overloaded=overloaded,
        any_engine_up=any(gate.engine_up.get(e.name) is not False for e in slots),
        waiting=st.jobs.depth() if st.jobs is not None else 0,
    )


class AgentServer:
    """The agent-check listener: one line per connection, then close."""

    def __init__(self, st: Watched):
        self.st = st
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, backlog: int = 128) -> list[str]:
        """Bind (an ``OSError`` propagates: a clear startup error); the bound addresses."""
        try:
            self.server = await asyncio.start_server(
                self._answer, host, port, reuse_address=True, backlog=backlog
            )
        except OSError as exc:
            raise OSError(exc.errno, f"agent_listen {host}:{port}: {exc.strerror}") from exc
        out = []
        for sock in self.server.sockets:
            h, p = sock.getsockname()[:2]
            out.append(f"tcp://[{h}]:{p}" if ":" in h else f"tcp://{h}:{p}")
        return out

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Answer first: HAProxy sends nothing unless ``agent-send`` is configured, and
            # waiting for a line would make every check take READ_TIMEOUT_SECONDS (a
            # ``timeout check`` below it would fail every check, and HAProxy keeps a
            # server whose agent fails at its last weight: a draining box never seen
            # to drain). Then read what it may have sent, briefly, so that closing with
            # unread bytes does not reset the connection before the reply is read.
            writer.write((reply(facts_of(self.st)) + "\n").encode("ascii"))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(TimeoutError, ValueError, ConnectionError):
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
