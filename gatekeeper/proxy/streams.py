"""The pass-through event streams open now, so that a stop can end them.

An engine's own ``text/event-stream`` answer on a pass route (a progress feed, a log
tail) may never end by itself. At a stop, aiohttp waits for every open handler for the
close grace, cancels only its request body, and waits again: such a stream held a stop
with nothing running for 2 x ``CLOSE_GRACE_SECONDS``. The relay of each one registers
its task here while it relays; the app's ``on_shutdown`` (which runs once the drain is
over and before aiohttp waits for handlers) cancels them all, as the Gradio route does
for its idle session streams. The app registers the jobs' ``/events`` watchers here too
(a job queued until the next start never brings the change they wait for).
Generations are never registered: their relays hold a
``Lease`` and the drain has already waited for them.

    streams = OpenStreams()
    task = streams.enter()       # inside the relay's task, when the stream begins
    ...
    streams.leave(task)          # in its ``finally``
    streams.close_all()          # at shutdown: the number of streams cancelled
"""

from __future__ import annotations

import asyncio

from multidict import CIMultiDictProxy


def is_event_stream(headers: CIMultiDictProxy[str]) -> bool:
    return headers.get("Content-Type", "").lower().startswith("text/event-stream")


class OpenStreams:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def open(self) -> int:
        return len(self._tasks)

    def enter(self) -> asyncio.Task[object] | None:
        """Register the current task (the relay's); ``leave`` it in a ``finally``."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        return task

    def leave(self, task: asyncio.Task[object] | None) -> None:
        if task is not None:
            self._tasks.discard(task)

    def close_all(self) -> int:
        """Cancel every registered stream's task (each ends its relay's ``finally``)."""
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)
