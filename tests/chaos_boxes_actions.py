"""The hostile exchanges of the two-box chaos run (``chaos_boxes``), spread over both
boxes' public listeners. Each returns an outcome label; an answer to one user carrying
the other's id raises ``chaos_identity.Crossed`` (``Boxes.answer``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

import aiohttp
from chaos_boxes import JOBS, USERS, Action, Boxes, _song


async def async_job(b: Boxes, rng: random.Random) -> str:
    """Submitted on one box, waited for and its result read on the other."""
    box, other = b.pick(rng)
    who = rng.choice(USERS)
    handle = await b.submit(box, who, _song(rng))
    if handle is None:
        return "refused"
    state = await b.wait_final(other, who, handle)
    if state == "done":
        async with b.http.get(f"{other.url}{JOBS}/{handle}/result") as r:
            await b.answer(r, who)
            return f"done:{r.status}"
    return state


async def held(b: Boxes, rng: random.Random) -> str:
    """A held request on either box, read to its end."""
    box, _ = b.pick(rng)
    who = rng.choice(USERS)
    async with b.http.post(box.url + "/generate", json=_song(rng), headers={"X-User": who}) as r:
        await b.answer(r, who)
        return str(r.status)


async def held_vanishes(b: Boxes, rng: random.Random) -> str:
    """A held client that leaves while its job waits or runs."""
    box, _ = b.pick(rng)
    who = rng.choice(USERS)

    async def one() -> None:
        song = {**_song(rng), "seconds": 1.0}
        async with b.http.post(box.url + "/generate", json=song, headers={"X-User": who}) as r:
            await b.answer(r, who)

    task = asyncio.create_task(one())
    done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, 0.6))
    if done:
        task.result()
        return "finished"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await task
    return "vanished"


async def cancel(b: Boxes, rng: random.Random) -> str:
    """Submitted on one box, cancelled a moment later on the other."""
    box, other = b.pick(rng)
    who = rng.choice(USERS)
    handle = await b.submit(box, who, {**_song(rng), "seconds": 0.8})
    if handle is None:
        return "refused"
    await asyncio.sleep(rng.uniform(0.0, 0.3))
    url = f"{other.url}{JOBS}/{handle}"
    async with b.http.get(url, headers={"X-User": who}) as r:
        before = json.loads(await b.answer(r, who)).get("state")
    async with b.http.delete(url, headers={"X-User": who}) as r:
        await b.answer(r, who)
        code = r.status
    state = await b.wait_final(box, who, handle)
    if code in (200, 202, 204) and before in ("queued", "running") and state == "done":
        return f"cancel_ignored:{code}"
    return f"deleted:{code}:{state}"


async def coalesce(b: Boxes, rng: random.Random) -> str:
    """The same song from 2-4 submitters (both users, both boxes) at once: each gets
    its own handle, one user's answers never carry the other's."""
    song = _song(rng, rng.randrange(2))
    plan = [(rng.choice(b.boxes), rng.choice(USERS)) for _ in range(rng.randrange(2, 5))]
    handles = await asyncio.gather(*(b.submit(box, who, song) for box, who in plan))
    finals = await asyncio.gather(
        *(
            b.wait_final(b.boxes[rng.randrange(2)], who, h)
            for (_, who), h in zip(plan, handles, strict=True)
            if h is not None
        )
    )
    return "ok" if all(s == "done" for s in finals) else "partial"


async def listing(b: Boxes, rng: random.Random) -> str:
    """A user's own list on either box: none of the other user's handles."""
    box, _ = b.pick(rng)
    who = rng.choice(USERS)
    async with b.http.get(box.url + JOBS, headers={"X-User": who}) as r:
        await b.answer(r, who)
        return str(r.status)


ACTIONS: dict[str, tuple[Action, int]] = {
    "async_job": (async_job, 4),
    "held": (held, 3),
    "held_vanishes": (held_vanishes, 2),
    "cancel": (cancel, 2),
    "coalesce": (coalesce, 2),
    "listing": (listing, 1),
}
