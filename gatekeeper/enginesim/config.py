"""SimConfig: how the simulated engine behaves (a leaf: imports nothing of the simulator)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SimConfig:
    """How the simulated engine behaves; :func:`main` builds one from the CLI flags."""

    seconds: float = 30.0  # work per generation at full speed
    memory_mb: int = 256  # memory held per running generation
    burn_cpu: bool = True  # spin a CPU core per generation in a worker process
    batch_size: int = 4  # items of a /batch-generate without "items"
    progress_interval: float = 0.2  # spacing of SSE progress events
    max_history: int = 1000  # finished generations kept for /progress and /result

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, got {self.seconds!r}")
        if self.memory_mb < 0:
            raise ValueError(f"memory_mb must be >= 0, got {self.memory_mb!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not self.progress_interval > 0:
            raise ValueError(f"progress_interval must be > 0, got {self.progress_interval!r}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history!r}")
