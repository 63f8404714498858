"""The resource monitor: samples CPU % and memory % in the background.

The request path never calls psutil or reads a file (issue #2): this loop
samples every ``admission.sample_interval`` seconds, advances the hysteresis
state with the pure ``admission.ResourceState.advance`` and publishes the new
immutable state onto the gate, where a request reads it for free.

Two sources, chosen by ``admission.resources.source``:

- ``psutil``: system-wide CPU % since the previous sample, smoothed with an
  exponential moving average (``cpu_smoothing`` is the new sample's weight), so
  one busy second does not flip the gate; memory % as ``virtual_memory().percent``.
- ``file``: a JSON file ``{"cpu_percent": 95, "memory_percent": 40}`` re-read
  every interval, like Envoy's injected resource monitor, so tests and fire
  drills drive overload deterministically. Its readings are taken as they are
  (no smoothing: the file *is* the truth being injected). A missing or broken
  file keeps the previous readings and logs once per distinct problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from .admission import ResourceState
from .config import Config, Resources

log = logging.getLogger("gatekeeper.monitor")

Reading = tuple[float, float]  # (cpu_percent, memory_percent)


class SampleError(Exception):
    """A reading could not be taken; the previous one stays in force."""


def psutil_sampler() -> Callable[[], Reading]:
    psutil.cpu_percent(interval=None)  # primes the counter: the first call always says 0.0

    def sample() -> Reading:
        return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent

    return sample


def file_sampler(path: str) -> Callable[[], Reading]:
    p = Path(path)

    def sample() -> Reading:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            cpu, mem = data["cpu_percent"], data["memory_percent"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SampleError(f"resource file {path}: {exc!r}") from exc
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (cpu, mem)):
            raise SampleError(f"resource file {path}: readings must be numbers, got {data!r}")
        return float(cpu), float(mem)

    return sample


def make_sampler(resources: Resources) -> Callable[[], Reading]:
    if resources.source == "file":
        assert resources.file is not None  # validated by config
        return file_sampler(resources.file)
    return psutil_sampler()


class Monitor:
    """Samples on a timer and publishes ``ResourceState`` through ``publish``.

    ``config`` is read on every tick, so a reload that changes thresholds, the
    interval or the source takes effect at the next sample.
    """

    def __init__(
        self,
        config: Callable[[], Config],
        publish: Callable[[ResourceState], None],
        *,
        clock: Callable[[], float],
        sampler_factory: Callable[[Resources], Callable[[], Reading]] = make_sampler,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._config = config
        self._publish = publish
        self._clock = clock
        self._factory = sampler_factory
        self._sampler: Callable[[], Reading] | None = None
        self._sampler_for: tuple[str, str | None] | None = None
        self._cpu_smoothed: float | None = None
        self._last_error: str | None = None
        self._sleep = sleep
        self._reported = (False, False)  # (cpu, memory) overloaded, as last logged
        self.state = ResourceState()

    def sample_once(self) -> ResourceState:
        """Take one reading and advance the state (the loop body, callable from tests)."""
        res = self._config().admission.resources
        key = (res.source, res.file)
        if self._sampler is None or self._sampler_for != key:
            self._sampler, self._sampler_for = self._factory(res), key
            self._cpu_smoothed = None
        try:
            cpu, mem = self._sampler()
        except SampleError as exc:
            if str(exc) != self._last_error:
                log.warning("resource sample failed, keeping previous readings: %s", exc)
                self._last_error = str(exc)
            return self.state
        if self._last_error is not None:
            log.info("resource sampling recovered")
            self._last_error = None
        if res.source == "psutil":
            prev = self._cpu_smoothed
            a = res.cpu_smoothing
            cpu = cpu if prev is None else a * cpu + (1 - a) * prev
            self._cpu_smoothed = cpu
        self.state = self.state.advance(
            cpu,
            mem,
            res.cpu_percent,
            res.memory_percent,
            self._clock(),
        )
        self._publish(self.state)
        return self.state

    def poll_once(self) -> float:
        """One step of ``run``: sample, log a change of the overload state, and return the
        seconds until the next step (read live: a reload may change the interval)."""
        try:
            state = self.sample_once()
        except Exception:
            # A dead monitor would freeze admission on its last readings forever.
            log.exception("resource sampling failed; retrying next interval")
        else:
            self._report(state)
        return self._config().admission.sample_interval

    def _report(self, state: ResourceState) -> None:
        """Log the overload state when it differs from the last one logged.

        The baseline is "not overloaded", not the first sample: an overload present
        at start (the app takes that sample before the loop runs) is logged too.
        """
        before = self._reported
        after = (state.cpu_overloaded, state.memory_overloaded)
        if before == after:
            return
        self._reported = after
        # A resource newly over its threshold is a WARNING; a recovery is good news.
        worse = any(now and not was for was, now in zip(before, after, strict=True))
        log.log(
            logging.WARNING if worse else logging.INFO,
            "resource state changed: cpu %.1f%% overloaded=%s, memory %.1f%% overloaded=%s",
            state.cpu_percent,
            state.cpu_overloaded,
            state.memory_percent,
            state.memory_overloaded,
        )

    async def run(self) -> None:
        """Step every ``admission.sample_interval``, starting one interval from now (the
        first reading is the caller's ``sample_once``, taken before admission starts)."""
        while True:
            await self._sleep(self._config().admission.sample_interval)
            self.poll_once()
