"""An admission slot's lease: granted by the gate, held by one owner, released once.

Every path that runs a generation holds its slot through a ``Lease``, and frees
it through this module only:

===================  ====================================  =================================
path                 holder of the lease                   released when
===================  ====================================  =================================
admit, ``cancel``    the proxy's admit step (``with``)     that block is left, any way
admit, ``finish``    the relay's own task (``follow``)     that task ends, any way
queue route          the job's runner task (``follow``)    that task ends, any way
Gradio join          the join (``with``), then its event   the event ends (``GradioEvents``)
                     (``hand_over``)
===================  ====================================  =================================

The rules, enforced here and nowhere else:

1. ``release`` frees the slot exactly once. A second call frees nothing: it
   returns False and is counted (``Lease.repeats``, and the gate's
   ``repeat_releases``), so a path that releases twice is visible in tests,
   never a double free.
2. A lease has one holder at a time. ``follow(task)`` and ``hand_over`` give it
   to the new holder; leaving the ``with`` block after that releases nothing.
   A ``with`` block left before the hand-over (an error, a cancellation, a
   refusal) releases it.
3. A lease no path will release is not lost silently: the gate lists every
   lease still held (``Gate.running``) with its ``holder`` and start time.

Usage (the ``finish`` admit path)::

    with lease:                         # any failure before the task exists frees the slot
        task = asyncio.create_task(relay.run())
        lease.follow(task, "finish-relay")  # from here the task's end frees it
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


@dataclass(eq=False)
class Lease:
    """One admitted generation's slot on ``engine``, held since ``started_at``."""

    route: str
    started_at: float
    engine: str
    # The gate's side: frees the slot (called once), and hears of a repeated release.
    _free: Callable[[Lease], None] = field(repr=False)
    _repeated: Callable[[Lease], None] | None = field(default=None, repr=False)
    # Who must release it now (tests and debugging read it; see the table above).
    holder: str = "taker"
    released: bool = False
    _handed: bool = field(default=False, repr=False)
    repeats: int = 0  # releases after the first: each one a bug of its caller, made harmless
    # What the engine reports of the generation's progress (a Gradio app's ``progress``
    # frames: gradio.frames); None: nothing reported.
    progress: float | None = None
    progress_description: str | None = None

    def release(self) -> bool:
        """Free the slot; True the first time, False (counted, no effect) afterwards."""
        if self.released:
            self.repeats += 1
            if self._repeated is not None:
                self._repeated(self)
            return False
        self.released = True
        self.holder = "-"
        self._free(self)
        return True

    def hand_over(self, holder: str) -> None:
        """``holder`` owns the lease from now and releases it; the ``with`` block no longer."""
        self.holder = holder
        self._handed = True

    def follow(self, task: asyncio.Future[Any], holder: str) -> None:
        """The lease is released when ``task`` ends (result, error or cancellation).

        Call it after the task's other done-callbacks that must run while the slot is
        still held: asyncio runs done-callbacks in the order they were added."""
        self.hand_over(holder)
        task.add_done_callback(self._task_done)

    def _task_done(self, _: asyncio.Future[Any]) -> None:
        self.release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._handed and not self.released:
            self.release()
