"""``log``: what gatekeeper's own log writes (issue #18 §8: a flood costs almost nothing).

The level and format are command-line flags (``--log-level``, ``--log-format``),
bound at start; what is here may change on a reload. ``refusals`` bounds the
access lines of refused requests under a flood: the first few per reason and
client each second are logged as before, the rest counted into one summary line
per second (``gatekeeper.observability.lograte``). The metrics count every one.
"""

from __future__ import annotations

from gatekeeper.config.declare import declared, integer, section


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
class Log:
    refusals: RefusalLog = section(
        "Refusal lines under a flood: the first few logged, the rest summarised each second.",
        factory=RefusalLog,
    )
