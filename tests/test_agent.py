"""HAProxy's agent-check (issue #11 §2): the pure answer table, its facts, the listener."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.app.process import Gatekeeper
from gatekeeper.app.wiring import create_state
from gatekeeper.config import load_config
from gatekeeper.core.lease import Lease
from gatekeeper.lifecycle.haproxy_agent import BUSY_PERCENT, AgentServer, Facts, facts_of, reply


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "draining": False,
        "slots": 2,
        "free": 2,
        "overloaded": (),
        "any_engine_up": True,
    }
    return Facts(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("f", "answer"),
    [
        (facts(), "ready 100%"),
        (facts(free=1), "ready 50%"),
        (facts(slots=100, free=1), "ready 2%"),  # a free slot always outweighs a full box
        (facts(slots=3, free=2), "ready 67%"),
        (facts(free=0), "ready 1%"),  # full: a candidate of last resort, not out of rotation
        (facts(free=0, waiting=5), "ready 1%"),
        (facts(overloaded=("cpu",)), "ready 0%"),  # gatekeeper would refuse: no new session
        (facts(overloaded=("memory",), free=0), "ready 0%"),
        (facts(any_engine_up=False, free=0), "maint"),
        (facts(any_engine_up=False, overloaded=("cpu",)), "maint"),
        (facts(draining=True), "drain"),  # draining beats everything
        (facts(draining=True, any_engine_up=False), "drain"),
        (facts(slots=0, free=0), "ready 1%"),
    ],
)
def test_reply_table(f: Facts, answer: str) -> None:
    """draining > no engine up > overloaded > full > free, and every healthy answer starts
    with "ready" so a previous drain or maint is undone."""
    assert reply(f) == answer


TWO_ENGINES = """
upstream:
  engines:
    - {name: a, url: "http://127.0.0.1:1", max_in_flight: 1}
    - {name: b, url: "http://127.0.0.1:2", max_in_flight: 2}
admission:
  resources: {source: file, file: /nonexistent}
"""


async def test_facts_of_counts_free_slots_on_engines_that_are_up() -> None:
    """Free slots are those of engines not probed down and not in use; draining and the
    resource verdicts come from the gate."""
    st = await create_state(load_config(TWO_ENGINES))
    try:
        assert facts_of(st) == Facts(False, 3, 3, (), True, 0)
        ticket = st.gate.try_admit("generate", st.clock())
        assert isinstance(ticket, Lease)
        assert facts_of(st).free == 2
        st.set_engine_up(ticket.engine, False)
        assert facts_of(st).free == (1 if ticket.engine == "b" else 2)
        st.set_engine_up("a", False)
        st.set_engine_up("b", False)
        assert facts_of(st).any_engine_up is False and reply(facts_of(st)) == "maint"
        st.gate.draining = True
        assert reply(facts_of(st)) == "drain"
        ticket.release()
    finally:
        await st.runtime.close()


async def test_an_orphaned_generation_counts_as_busy_in_the_agent_answer() -> None:
    """A generation a killed process left running on an engine (``Orphans``, issue #18 §5)
    occupies a slot in the agent's weight as a running one does, until the engine is
    known idle: a box whose only engine computes an orphan answers "ready 1%", not 100%."""
    st = await create_state(load_config(TWO_ENGINES))
    try:
        now = st.clock()
        st.gate.hold_orphan("a", now + 600.0)  # a's only slot: the orphan's
        assert facts_of(st).free == 2 and reply(facts_of(st)) == "ready 67%"
        st.gate.hold_orphan(None, now + 600.0)  # engine unknown: every candidate is held
        assert facts_of(st).free == 1
        ticket = st.gate.try_admit("generate", st.clock())
        assert isinstance(ticket, Lease) and ticket.engine == "b"
        assert facts_of(st).free == 0 and reply(facts_of(st)) == f"ready {BUSY_PERCENT}%"
        st.gate.engine_busy("a", False)  # a's busy signal: idle, its orphans ended
        assert facts_of(st).free == 1
        ticket.release()
    finally:
        await st.runtime.close()


async def _ask(port: int, send: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if send:
        writer.write(send)
    data = await asyncio.wait_for(reader.read(), 2.0)  # the agent closes after one line
    writer.close()
    return data


async def test_agent_server_answers_one_line_and_closes() -> None:
    """With or without HAProxy's agent-send line, one answer line, then the close."""
    st = await create_state(load_config(TWO_ENGINES))
    server = AgentServer(st)
    try:
        (url,) = await server.start("127.0.0.1", 0)
        port = int(url.rsplit(":", 1)[1])
        assert await _ask(port) == b"ready 100%\n"
        assert await _ask(port, b"status\n") == b"ready 100%\n"
        st.gate.draining = True
        assert await _ask(port, b"status\n") == b"drain\n"
    finally:
        await server.close()
        await st.runtime.close()


async def test_agent_port_in_use_is_a_clear_error() -> None:
    """A bind failure names agent_listen and the address."""
    st = await create_state(load_config(TWO_ENGINES))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"agent_listen 127.0.0.1:{port}"):
            await AgentServer(st).start("127.0.0.1", port)
    await st.runtime.close()


async def test_gatekeeper_serves_the_agent_until_it_stops(tmp_path: Path) -> None:
    """agent_listen set: the agent is bound with the other listeners, says "drain" as soon
    as the drain starts, and is closed by stop."""
    rules = (
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nagent_listen: 127.0.0.1:0\n"
        f"jobs: {{dir: {tmp_path}}}\nshutdown: {{linger: 0s}}\n" + TWO_ENGINES
    )
    gk = Gatekeeper(load_config(rules))
    await gk.start()
    try:
        (url,) = gk.agent_urls
        port = int(url.rsplit(":", 1)[1])
        assert await _ask(port) in (b"ready 100%\n", b"maint\n")  # the probe may say down
        assert await gk.drain()
        assert await _ask(port) == b"drain\n"
    finally:
        await gk.stop()
    with pytest.raises(OSError):
        await _ask(port)


async def test_readyz_admit_says_whether_a_job_can_start_now(aiohttp_client: Any) -> None:
    """/readyz stays 200 while every slot is busy; /readyz?admit=1 is 503 "busy" then, and
    200 again once the slot is free."""
    from gatekeeper.admin import build_admin_app

    st = await create_state(load_config("admission: {resources: {source: file, file: /x}}"))
    st.set_upstream_up(True)
    client = await aiohttp_client(build_admin_app(st))
    try:
        assert (await client.get("/readyz?admit=1")).status == 200
        ticket = st.gate.try_admit("generate", st.clock())
        assert isinstance(ticket, Lease)
        assert (await client.get("/readyz")).status == 200
        r = await client.get("/readyz?admit=1")
        assert r.status == 503 and (await r.json())["reasons"] == ["busy"]
        ticket.release()
        assert (await client.get("/readyz?admit=1")).status == 200
    finally:
        await st.runtime.close()
