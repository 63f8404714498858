"""The free-space floor of the state directory (``jobs.min_free_bytes``).

A job needs room for its body and for the engine's whole answer; a full disk
ends running jobs ``storage_error``. Below the floor, new submissions are
refused ``503 storage_full`` before anything is written, and gatekeeper takes
them again by itself once space returns.

Free space is *sampled* (``statvfs``, one syscall) by the jobs' background
tick and when a storage fault is seen, never on the request path: a refusal
reads the last sample. The sample is what an unprivileged writer may use
(``f_bavail``), so the root-reserved blocks of ext4 do not count as free.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from gatekeeper.config import Config
from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.model import Refused

log = logging.getLogger("gatekeeper.jobs")

# How often the tick samples the free space (the refusal and the gauge follow it).
SAMPLE_EVERY_SECONDS = 0.25  # each jobs tick: statvfs costs about a microsecond
# After a claim failed on a storage fault, dispatch waits this long before the next try.
STORAGE_HOLD_SECONDS = 1.0


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class DiskFloor:
    """The last free-space sample of one directory and whether it is below the floor."""

    def __init__(self, directory: Path, measure: Callable[[Path], int] = free_bytes):
        self.directory = directory
        self._measure = measure
        self.free: int | None = None  # bytes; None before the first sample or when unreadable
        self._next = 0.0
        self._low = False

    def due(self, now: float) -> bool:
        return now >= self._next

    def sample(self, now: float, min_free: int) -> int | None:
        """Read the free space now; logs the crossings of the floor."""
        self._next = now + SAMPLE_EVERY_SECONDS
        try:
            self.free = self._measure(self.directory)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.directory, exc)
            self.free = None
        low = self.below(min_free)
        if low != self._low:
            self._low = low
            if low:
                log.error(
                    "state directory %s: %d MiB free, below jobs.min_free_bytes (%d MiB):"
                    " new jobs are refused 503 storage_full until space returns",
                    self.directory,
                    (self.free or 0) >> 20,
                    min_free >> 20,
                )
            else:
                log.warning(
                    "state directory %s: %d MiB free again: new jobs are accepted",
                    self.directory,
                    (self.free or 0) >> 20,
                )
        return self.free

    def below(self, min_free: int) -> bool:
        """The last sample is below ``min_free`` (0 disables the floor)."""
        return min_free > 0 and self.free is not None and self.free < min_free

    def refusal(self, cfg: Config, waiting: int) -> Refused | None:
        """``503 storage_full`` (Retry-After: ``admission.retry_after_default``) while the
        last sample is below ``jobs.min_free_bytes``; None otherwise."""
        if not self.below(cfg.jobs.min_free_bytes):
            return None
        fields = Refused.fields_of(cfg, waiting)
        return Refused(QueueReason.STORAGE_FULL, 503, cfg.admission.retry_after_default, fields)
