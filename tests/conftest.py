"""Shared fixtures. Real-process helpers live in ``support.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes appended here are stopped (SIGTERM, then kill) when the test ends."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
