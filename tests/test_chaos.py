"""The chaos driver (tests/chaos.py) against the real CLI and engine-sim: a fast, seeded run."""

from __future__ import annotations

import os
from pathlib import Path

from chaos import Chaos

SEED = int(os.environ.get("GATEKEEPER_CHAOS_SEED", "20261203"))


async def test_chaos_fast_run(tmp_path: Path) -> None:
    """Hostile clients, engine kills and reloads in both modes: no leak, no over-admission."""
    async with Chaos(tmp_path, SEED) as c:
        try:
            for i in range(4):
                await c.phase(120, "finish" if i % 2 == 0 else "cancel")
            await c.sigterm_phase()
        finally:
            print("\n" + c.summary())
