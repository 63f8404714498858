"""``log``: what gatekeeper's own log writes (issue #18 §8: a flood costs almost nothing).

The level and format are command-line flags (``--log-level``, ``--log-format``),
bound at start; what is here may change on a reload. ``refusals`` bounds the
access lines of refused requests under a flood: the first few per reason and
client each second are logged as before, the rest counted into one summary line
per second (``gatekeeper.observability.lograte``). The metrics count every one.
``ungated`` tunes the watch for generations passing ungated
(``gatekeeper.observability.ungated``, issue #18 §7).
"""

from __future__ import annotations

from typing import Any

from gatekeeper.config.declare import checked, declared, duration, integer, section
from gatekeeper.config.values import POSITIVE_DURATION_PATTERN, parse_duration


def _positive_duration(value: Any) -> str | None:
    seconds = parse_duration(value)
    if seconds is None:
        return "must be a duration: seconds as a number, or e.g. '30s', '2m', '1h'; or null"
    return None if seconds > 0 else "must be > 0"


@declared
class RefusalLog:
    per_client: int = integer(
        "Access lines of refused requests (decision rejected or blocked) logged one by one"
        " each second for one reason and client (the line's client address); beyond it they"
        " are counted into one summary line per second (message 'refusals': how many were"
        " refused, left unlogged and from how many clients, per reason). 0: summaries only.",
        minimum=0,
        default=5,
    )
    max_per_second: int = integer(
        "At most this many refusal lines logged one by one per second in all, whatever the"
        " number of clients (a flood from many addresses); the rest go to the summary.",
        minimum=0,
        default=50,
    )


@declared
class UngatedLog:
    slow_answer: float | None = checked(
        "A request on a pass route whose answer's head took this long looks like a"
        " generation passing ungated: counted (gatekeeper_ungated_generations_total), shown"
        " in /status and gatekeeper status, and warned about. null: a quarter of"
        " admission.expected_seconds, between 1s and 30s. Gradio joins on a pass route"
        " always count.",
        _positive_duration,
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": POSITIVE_DURATION_PATTERN},
            ]
        },
        convert=parse_duration,
        allow_none=True,
        default=None,
    )
    warn_every: float = duration(
        "At most one WARNING about ungated generations per this interval (the first at"
        " once; each later one gives the count since the last).",
        default=600.0,
    )


@declared
class Log:
    refusals: RefusalLog = section(
        "Refusal lines under a flood: the first few logged, the rest summarised each second.",
        factory=RefusalLog,
    )
    ungated: UngatedLog = section(
        "The watch for requests that look like generations but pass ungated (pass routes).",
        factory=UngatedLog,
    )
