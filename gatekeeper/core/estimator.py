"""The expected duration of a generation, from the ones that completed (PURE).

The gate quotes it in a ``busy`` rejection's Retry-After (``admission.retry_after``)
and the waiting room in its estimates; every path that sees a generation end
successfully feeds it (the relay, a job's runner, a Gradio event).
"""

from __future__ import annotations

import statistics
from collections import deque


class DurationEstimator:
    """Expected generation duration: the median of the last ``window`` completed ones.

    The median ignores the odd 30-second failure or 40-minute outlier that a
    mean would chase. Until anything completes it answers the configured prior.
    """

    def __init__(self, prior: float, window: int = 20):
        self.prior = prior
        self._recent: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        self._recent.append(seconds)

    @property
    def samples(self) -> int:
        return len(self._recent)

    @property
    def expected(self) -> float:
        return statistics.median(self._recent) if self._recent else self.prior
