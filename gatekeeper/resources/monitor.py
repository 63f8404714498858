"""The resource monitor: samples every signal in the background.

The request path never calls psutil or reads a file (issue #2): this loop
samples every ``admission.sample_interval`` seconds, advances the hysteresis
state with the pure ``admission.ResourceState.advance`` and publishes the new
immutable state onto the gate, where a request reads it for free.

What is sampled, and from where, is ``sources`` (chosen by
``admission.resources.source``):

- ``psutil``: CPU % and memory % (cgroup-relative when the engine's cgroup v2
  has limits, else host-wide), PSI avg10 of cpu/memory/io, GPU memory and
  utilisation through NVML (issue #11 §3); each signal live or absent with a
  reason. CPU % is smoothed with an exponential moving average
  (``cpu_smoothing`` is the new sample's weight), so one busy second does not
  flip the gate. PSI avg10 is already a ten-second average and is not smoothed.
- ``file``: readings from a JSON file re-read every interval, like Envoy's
  injected resource monitor, so tests and fire drills drive overload
  deterministically. Its readings are taken as they are (no smoothing: the
  file *is* the truth being injected). A missing or broken file keeps the
  previous readings and logs once per distinct problem.

A sampler may also return a bare ``(cpu_percent, memory_percent)`` tuple (the
fakes of tests): no other signal is then live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gatekeeper.config import Config, Resources
from gatekeeper.core.readings import READING_OF, ResourceState
from gatekeeper.core.vocab import AdmitReason
from gatekeeper.resources.samplers import (
    HostSignal,
    Sample,
    SampleError,
    file_sampler,
    make_sampler,
)

__all__ = ["Monitor", "Reading", "SampleError", "file_sampler", "make_sampler"]

log = logging.getLogger("gatekeeper.monitor")

Reading = tuple[float, float]  # (cpu_percent, memory_percent): a sampler's simplest answer


def _sample_of(raw: Sample | Reading) -> Sample:
    if isinstance(raw, Sample):
        return raw
    cpu, mem = raw
    here = HostSignal(True, "injected sampler")
    return Sample(cpu, mem, signals={"cpu": here, "memory": here})


def _percent(v: float | None) -> str:
    return "absent" if v is None else f"{v:.1f}%"


def _sampler_key(res: Resources) -> tuple[object, ...]:
    """What a sampler is built from: a reload that changes any of it builds a new one."""
    return (res.source, res.file, res.cgroup, res.gpu.devices)


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
        sampler_factory: Callable[[Resources], Callable[[], Sample | Reading]] = make_sampler,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_sample: Callable[[Sample], None] | None = None,
    ):
        self._config = config
        self._publish = publish
        self._on_sample = on_sample
        self._clock = clock
        self._factory = sampler_factory
        self._sampler: Callable[[], Sample | Reading] | None = None
        self._sampler_for: tuple[object, ...] | None = None
        self._cpu_smoothed: float | None = None
        self._last_error: str | None = None
        self._problems: frozenset[str] = frozenset()  # a sample's non-fatal ones, as logged
        self._sleep = sleep
        self._reported: tuple[bool, ...] = ()  # overloaded flags as last logged; () = none
        self.state = ResourceState()
        self.sample: Sample | None = None  # the last good one (signals, PSI, GPUs)

    def sample_once(self) -> ResourceState:
        """Take one reading and advance the state (the loop body, callable from tests)."""
        res = self._config().admission.resources
        key = _sampler_key(res)
        if self._sampler is None or self._sampler_for != key:
            self.close()
            self._sampler, self._sampler_for = self._factory(res), key
            self._cpu_smoothed = None
        try:
            sample = _sample_of(self._sampler())
        except SampleError as exc:
            if str(exc) != self._last_error:
                log.warning("resource sample failed, keeping previous readings: %s", exc)
                self._last_error = str(exc)
            return self.state
        if self._last_error is not None:
            log.info("resource sampling recovered")
            self._last_error = None
        self._log_problems(sample.problems)
        cpu = sample.cpu_percent
        if res.source == "psutil":
            prev = self._cpu_smoothed
            a = res.cpu_smoothing
            cpu = cpu if prev is None else a * cpu + (1 - a) * prev
            self._cpu_smoothed = cpu
        self.state = self.state.advance(sample.readings(res, cpu), res, self._clock())
        self.sample = sample
        if self._on_sample is not None:
            self._on_sample(sample)
        self._publish(self.state)
        return self.state

    def _log_problems(self, problems: tuple[str, ...]) -> None:
        """A device or cgroup that fails keeps failing every tick: log each problem when it
        appears, and once when the last one clears."""
        now = frozenset(problems)
        for problem in sorted(now - self._problems):
            log.warning("resource signal problem (previous reading kept): %s", problem)
        if self._problems and not now:
            log.info("resource signals recovered")
        self._problems = now

    def close(self) -> None:
        """Release the sampler's handles (NVML); the next sample builds a new one."""
        close = getattr(self._sampler, "close", None)
        if close is not None:
            close()
        self._sampler = None

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
        flags = state.overloaded()
        before = self._reported or (False,) * len(flags)
        after = tuple(flags.values())
        if before == after:
            return
        self._reported = after
        # A resource newly over its threshold is a WARNING; a recovery is good news.
        worse = any(now and not was for was, now in zip(before, after, strict=True))
        # The opt-in signals are named only while one of them is (or was) overloaded.
        extra = [
            f"{reason} {_percent(getattr(state, READING_OF[reason]))} overloaded={now}"
            for (reason, now), was in zip(flags.items(), before, strict=True)
            if reason not in (AdmitReason.CPU, AdmitReason.MEMORY) and (now or was)
        ]
        log.log(
            logging.WARNING if worse else logging.INFO,
            "resource state changed: cpu %.1f%% overloaded=%s, memory %.1f%% overloaded=%s%s",
            state.cpu_percent,
            state.cpu_overloaded,
            state.memory_percent,
            state.memory_overloaded,
            "".join(", " + e for e in extra),
        )

    async def run(self) -> None:
        """Step every ``admission.sample_interval``, starting one interval from now (the
        first reading is the caller's ``sample_once``, taken before admission starts)."""
        while True:
            await self._sleep(self._config().admission.sample_interval)
            self.poll_once()
