"""Splicing a session's queue/data stream: the pure decisions (issue #19).

PURE: bytes and plain values in, bytes and plain values out; no I/O, no clock.

While a session has an event waiting in gatekeeper's waiting room, gatekeeper
writes that session's ``queue/data`` stream itself (``gradio.pipe``): its own
frames (``estimation``, a failure) for the events it holds, and the app's frames
for the events the app runs, relayed whole. The rules:

- **Frames are whole.** ``Framer`` cuts the app's bytes at frame boundaries (a
  blank line); gatekeeper's own frames are only ever put between two frames, so
  no frame is split or interleaved. A frame is passed on byte for byte unless its
  event id must be rewritten.
- **One event id per event, gatekeeper's.** A held event is known to the client by
  gatekeeper's id (``gatekeeper-…``, the join's answer); when its turn comes the
  join is forwarded and the app answers with its own id. ``IdMap`` holds both:
  app frames naming the app's id are rewritten to gatekeeper's (``rewrite``), a
  ``/cancel`` naming gatekeeper's id goes to the app with the app's (``to_app``).
- **close_stream only when nothing is left on either side.** The app says
  ``close_stream`` when *its* last event of the session ended; gatekeeper may still
  hold events of the session: then it is swallowed (``forward_close``), and
  gatekeeper sends its own when the last event ends.
- **Estimation frames** carry Gradio's fields: ``rank`` (0-based place in the
  waiting room), ``queue_size`` (everyone waiting) and ``rank_eta`` (seconds until
  the event is done, from gatekeeper's estimator: what Gradio's own ``rank_eta``
  means). One is sent again when the rank or the queue size changed, or the ETA
  moved a second or more from its own countdown (``Estimate.news``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from gatekeeper.gradio.wire import MAX_EVENT_BYTES, frame, parse_message

PREFIX = "gatekeeper-"
CLOSE_STREAM = frame({"msg": "close_stream", "event_id": None})
# How far (seconds) a shown ETA may drift from its own countdown before it is sent again.
ETA_SLACK = 1.0

_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")


class Framer:
    """Cuts a byte stream into whole SSE frames (each with its blank line).

    A "frame" longer than ``limit`` is handed on as it is (never held whole): it is
    not a Gradio message gatekeeper reads, and it reaches the client unchanged."""

    def __init__(self, limit: int = MAX_EVENT_BYTES):
        self._buf = bytearray()
        self._limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        buf += chunk
        out: list[bytes] = []
        start = 0
        while True:
            ends = [(i, len(e)) for e in _ENDS if (i := buf.find(e, start)) >= 0]
            if not ends:
                break
            i, n = min(ends)
            out.append(bytes(buf[start : i + n]))
            start = i + n
        del buf[:start]
        if len(buf) > self._limit:
            out.append(bytes(buf))
            buf.clear()
        return out

    def rest(self) -> bytes:
        """What is left at the stream's end (an unterminated frame), handed on as is."""
        out = bytes(self._buf)
        self._buf.clear()
        return out


def data_of(raw: bytes) -> str | None:
    """The frame's ``data:`` lines joined (WHATWG framing), or None if it has none."""
    lines = raw.decode("utf-8", "replace").splitlines()
    data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
    return "\n".join(data) if data else None


def message_of(raw: bytes) -> dict[str, Any] | None:
    """The JSON message of one frame, or None if it carries no Gradio message."""
    data = data_of(raw)
    if data is None or parse_message(data) is None:
        return None
    doc = json.loads(data)
    assert isinstance(doc, dict)
    return doc


class IdMap:
    """gatekeeper's event ids <-> the app's, for the events of one session."""

    def __init__(self) -> None:
        self._to_app: dict[str, str] = {}
        self._to_ours: dict[str, str] = {}

    def bind(self, ours: str, app: str) -> None:
        self._to_app[ours] = app
        self._to_ours[app] = ours

    def to_app(self, ours: str) -> str | None:
        return self._to_app.get(ours)

    def to_ours(self, app: str) -> str | None:
        return self._to_ours.get(app)

    def forget(self, ours: str) -> None:
        app = self._to_app.pop(ours, None)
        if app is not None:
            self._to_ours.pop(app, None)

    def __len__(self) -> int:
        return len(self._to_app)


def rewrite(raw: bytes, ids: IdMap) -> tuple[bytes, dict[str, Any] | None]:
    """The frame as the client must see it (the app's event id replaced by
    gatekeeper's, when it names one of the app's ids gatekeeper mapped), and its
    message (after the rewrite). Any other frame is returned byte for byte."""
    doc = message_of(raw)
    if doc is None:
        return raw, None
    app_id = doc.get("event_id")
    ours = ids.to_ours(app_id) if isinstance(app_id, str) else None
    if ours is None:
        return raw, doc
    doc["event_id"] = ours
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n", doc


def forward_close(held: int) -> bool:
    """Whether the app's ``close_stream`` goes on to the client: only when no event of
    the session is left (``held``: waiting in gatekeeper, forwarded but not yet answered
    by the app, or open in the app after it decided to close: ``pipe``)."""
    return held == 0


def estimation(event_id: str, rank: int, queue_size: int, rank_eta: float) -> bytes:
    """Gradio's ``estimation`` message for a held event (fields: module text)."""
    msg = {
        "msg": "estimation",
        "event_id": event_id,
        "rank": rank,
        "queue_size": queue_size,
        "rank_eta": round(rank_eta, 1),
    }
    return frame(msg)


def failure(event_id: str, detail: str) -> bytes:
    """The held event ended without running: a failed ``process_completed`` carrying
    ``detail`` the way Gradio's ``gr.Error`` does (the page: a toast with the text;
    gradio_client: ``AppError(detail)``)."""
    return frame(
        {
            "msg": "process_completed",
            "event_id": event_id,
            "success": False,
            "output": failure_output(detail),
        }
    )


def failure_output(detail: str) -> dict[str, object]:
    """The ``output`` of a failed completion, as Gradio gives a ``gr.Error``'s, shown."""
    return {"error": detail, "title": "gatekeeper", "duration": 30, "visible": True}


def cancelled(event_id: str) -> bytes:
    """What Gradio itself says of a cancelled event (``routes.cancel_event``)."""
    return frame({"msg": "process_completed", "event_id": event_id, "output": {}, "success": True})


@dataclass(frozen=True, slots=True)
class Estimate:
    """What an estimation frame told the client, and when (loop clock)."""

    rank: int
    queue_size: int
    rank_eta: float
    at: float

    def news(self, rank: int, queue_size: int, rank_eta: float, now: float) -> bool:
        """Whether a new estimation says something the client's countdown does not."""
        if rank != self.rank or queue_size != self.queue_size:
            return True
        counted_down = max(0.0, self.rank_eta - (now - self.at))
        return math.fabs(rank_eta - counted_down) >= ETA_SLACK
