"""The Gradio queue protocol, as far as admission needs it (PURE).

A Gradio app does not take a generation as one request. The browser and
``gradio_client`` ``POST .../queue/join`` (answered at once with an
``event_id``) and then read that event's progress and result from the
session's shared SSE stream ``GET .../queue/data?session_hash=...``; the
``/call/<api_name>`` REST flow is a POST returning an ``event_id`` and a GET
``/call/<api_name>/<event_id>`` SSE stream. A generation therefore starts at a
join and ends when its ``process_completed`` (or the session's
``close_stream``/``unexpected_error``, or the call stream's ``complete``/
``error``) passes through a *different* request.

This module knows the paths (with or without the ``/gradio_api`` prefix of
Gradio 5/6, under any ``root_path``: recognised by their tail), the join body,
the SSE framing (parsed incrementally from the bytes as they pass, never
buffered beyond one event) and the messages. See docs/gradio.md.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# The prefix Gradio 5.x/6.x puts before its API routes (4.x and 3.x have none).
API_PREFIX = "/gradio_api"

# An SSE event larger than this is not parsed (it is still relayed, byte for byte):
# Gradio's frames carry file URLs, not file contents, and are a few kB.
MAX_EVENT_BYTES = 1 << 20

# The messages that end one event (its ``event_id`` names it) ...
EVENT_ENDS = frozenset({"process_completed"})
# ... and those that end every event of the session still open (no or a null event_id).
SESSION_ENDS = frozenset({"close_stream", "unexpected_error"})
# The /call/<api_name>/<event_id> stream's SSE ``event:`` names that end the call.
CALL_ENDS = frozenset({"complete", "error"})


class Kind(StrEnum):
    JOIN = "join"  # POST .../queue/join
    DATA = "data"  # GET .../queue/data?session_hash=
    HEARTBEAT = "heartbeat"  # GET .../heartbeat/<session_hash>
    CALL = "call"  # POST .../call/<api_name>
    CALL_STREAM = "call_stream"  # GET .../call/<api_name>/<event_id>
    DIRECT = "direct"  # POST .../run/<api_name>, .../api/<api_name>, /api/predict
    CANCEL = "cancel"  # POST .../cancel
    OTHER = "other"  # the page, /config, /upload, files, theme, ...: never a generation


@dataclass(frozen=True, slots=True)
class GradioPath:
    kind: Kind
    root: str = ""  # the app's root path ("" or "/song"), before any /gradio_api
    api_name: str | None = None
    event_id: str | None = None
    session_hash: str | None = None  # heartbeat: from the path


def _root(prefix: str) -> str:
    """The app root from the path before an API route: strip the /gradio_api prefix."""
    prefix = prefix.rstrip("/")
    if prefix.endswith(API_PREFIX):
        prefix = prefix[: -len(API_PREFIX)]
    return prefix


def classify(method: str, path: str) -> GradioPath:
    """What a request to a Gradio app is, from its method and (normalised) path."""
    segs = path.rstrip("/").split("/")
    n = len(segs)
    last = segs[-1]
    second = segs[-2] if n >= 2 else ""
    third = segs[-3] if n >= 3 else ""
    if method == "POST" and second == "queue" and last == "join":
        return GradioPath(Kind.JOIN, _root("/".join(segs[:-2])))
    if method == "GET" and second == "queue" and last == "data":
        return GradioPath(Kind.DATA, _root("/".join(segs[:-2])))
    if method == "GET" and second == "heartbeat" and last:
        return GradioPath(Kind.HEARTBEAT, _root("/".join(segs[:-2])), session_hash=last)
    if method == "POST" and second == "call" and last:
        return GradioPath(Kind.CALL, _root("/".join(segs[:-2])), api_name=last)
    # 6.x also takes keyword data at .../call/v2/<api_name> (same event ids, same stream).
    if method == "POST" and second == "v2" and third == "call" and last:
        return GradioPath(Kind.CALL, _root("/".join(segs[:-3])), api_name=last)
    if method == "GET" and third == "call" and second and last:
        root = _root("/".join(segs[:-3]))
        return GradioPath(Kind.CALL_STREAM, root, api_name=second, event_id=last)
    if method == "GET" and third == "v2" and n >= 4 and segs[-4] == "call" and second and last:
        root = _root("/".join(segs[:-4]))
        return GradioPath(Kind.CALL_STREAM, root, api_name=second, event_id=last)
    if method == "POST" and second in ("run", "api") and last:
        return GradioPath(Kind.DIRECT, _root("/".join(segs[:-2])), api_name=last)
    if method == "POST" and last == "cancel":
        return GradioPath(Kind.CANCEL, _root("/".join(segs[:-1])))
    return GradioPath(Kind.OTHER)


@dataclass(frozen=True, slots=True)
class Join:
    """The parts of a join (or direct call) body that decide admission."""

    fn_index: int | None
    session_hash: str | None


def parse_join(body: bytes) -> Join | str:
    """The join body's ``fn_index`` and ``session_hash``; a string says what is wrong."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"the body is not JSON ({exc})"
    if not isinstance(doc, dict):
        return f"the body must be a JSON object, not {type(doc).__name__}"
    fn = doc.get("fn_index")
    if fn is not None and (not isinstance(fn, int) or isinstance(fn, bool) or fn < 0):
        return f"fn_index must be a non-negative integer, not {fn!r}"
    session = doc.get("session_hash")
    if session is not None and (not isinstance(session, str) or not session):
        return f"session_hash must be a non-empty string, not {session!r}"
    return Join(fn, session)


# zlib's window bits for each Content-Encoding a join body is read from (RFC 9110 §8.4.1):
# "deflate" is the zlib format, but some clients send a raw deflate stream.
_WBITS: dict[str, tuple[int, ...]] = {
    "gzip": (31,),
    "x-gzip": (31,),
    "deflate": (15, -15),
}


class UnreadableCoding(ValueError):
    """A ``Content-Encoding`` ``decoded_body`` does not undo."""


def decoded_body(body: bytes, encodings: Iterable[str], limit: int) -> bytes | None:
    """A copy of ``body`` with its ``Content-Encoding`` undone, to read a join from.

    gatekeeper forwards a body as it came (issue #18 §4) but must still read a
    compressed join. ``encodings``: the header's values (a list, applied in order,
    so undone in reverse; ``identity`` is no coding). None: a text over ``limit``
    bytes once decoded (the caller treats the function as unknown, as for a join
    too big to look at). Raises ``UnreadableCoding`` for a coding this module does
    not read (``br``, ``zstd``: no Gradio client compresses a join, and a join
    that cannot be read cannot be gated), ValueError for a body that is not what
    its coding says (the message names the coding).
    """
    codings = [c.strip().lower() for value in encodings for c in value.split(",") if c.strip()]
    out = body
    for coding in reversed(codings):
        if coding == "identity":
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise UnreadableCoding(
                f"Content-Encoding {coding!r} cannot be read here; send the join "
                f"uncompressed, or as {', '.join(sorted(_WBITS))}"
            )
        decoded = _inflate(out, coding, wbits, limit)
        if decoded is None:
            return None
        out = decoded
    return out


def _inflate(data: bytes, coding: str, wbits: tuple[int, ...], limit: int) -> bytes | None:
    problem = ""
    for bits in wbits:
        d = zlib.decompressobj(bits)
        try:
            out = d.decompress(data, limit + 1)
        except zlib.error as exc:
            problem = str(exc)
            continue
        if len(out) > limit:
            return None
        if not d.eof or d.unused_data:
            raise ValueError(f"the {coding} body is cut short or has bytes after its end")
        return out
    raise ValueError(f"the body is not valid {coding} ({problem})")


def event_id_of(body: bytes) -> str | None:
    """The ``event_id`` of a join / call answer (``{"event_id": "..."}``), if any."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(doc, dict):
        eid = doc.get("event_id")
        if isinstance(eid, str) and eid:
            return eid
    return None


def api_names(config: Any) -> dict[int, str]:
    """fn_index -> api_name from a Gradio ``/config`` document (``dependencies[]``).

    Gradio 4+ gives each dependency an ``id`` (the fn_index); 3.x uses the list
    position. A dependency without an api_name (``api_name=False``) is left out."""
    out: dict[int, str] = {}
    deps = config.get("dependencies") if isinstance(config, dict) else None
    if not isinstance(deps, list):
        return out
    for i, dep in enumerate(deps):
        if not isinstance(dep, dict):
            continue
        fn = dep.get("id", i)
        name = dep.get("api_name")
        if isinstance(fn, int) and isinstance(name, str) and name:
            out[fn] = name.lstrip("/")
    return out


@dataclass(frozen=True, slots=True)
class Gating:
    """Which functions of a Gradio route take a slot (``match.fn_index``/``api_name``).

    Neither set: every queued function is gated (the safe default)."""

    fn_index: frozenset[int] | None = None
    api_name: frozenset[str] | None = None

    def gated(self, fn_index: int | None, api_name: str | None) -> bool:
        if self.fn_index is None and self.api_name is None:
            return True
        if self.fn_index is not None and fn_index in self.fn_index:
            return True
        if self.api_name is not None:
            if api_name in self.api_name:
                return True
            # The name of this fn_index is unknown (no /config yet, or fn_index missing):
            # fail closed. A cheap UI event let through is harmless; a heavy one is not.
            if api_name is None and self.fn_index is None:
                return True
        return False


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str  # the ``event:`` field, "message" when absent
    data: str


class SSEParser:
    """An incremental text/event-stream parser (WHATWG framing): feed bytes as they
    arrive, get whole events. Lines end in LF, CRLF or CR; ``data:`` lines join with
    LF; comments (``:``) and unknown fields are ignored. An event over
    ``max_event_bytes`` is skipped (counted in ``oversized``), never buffered whole."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES):
        self._max = max_event_bytes
        self._buf = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._size = 0
        self._skipping = False
        self._cr = False  # the last chunk ended in CR: a following LF belongs to it
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        buf = self._buf
        buf += chunk
        start = 0
        n = len(buf)
        while True:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                end, nxt = cr, cr + (2 if cr + 1 < n and buf[cr + 1] == 0x0A else 1)
            else:
                end, nxt = lf, lf + 1
            self._line(bytes(buf[start:end]), out)
            start = nxt
        del buf[:start]
        if len(buf) > self._max:  # one line longer than any event we parse
            buf.clear()
            self._overflow()
        return out

    def _overflow(self) -> None:
        if not self._skipping:
            self.oversized += 1
        self._skipping = True
        self._data, self._event, self._size = [], "", 0

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if not raw:
            if self._data and not self._skipping:
                out.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._data, self._event, self._size, self._skipping = [], "", 0, False
            return
        if self._skipping:
            return
        self._size += len(raw)
        if self._size > self._max:
            self._overflow()
            return
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


@dataclass(frozen=True, slots=True)
class Message:
    """One Gradio queue message (the JSON in a ``data:`` line)."""

    msg: str
    event_id: str | None = None
    success: bool | None = None  # process_completed
    rank: int | None = None  # estimation (0-based)
    queue_size: int | None = None
    rank_eta: float | None = None


def parse_message(data: str) -> Message | None:
    """A queue/data frame's message, or None for anything else (``ALIVE``, junk)."""
    if not data.startswith("{"):
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("msg"), str):
        return None
    eid = doc.get("event_id")
    success = doc.get("success")
    if success is None and isinstance(doc.get("output"), dict) and doc["output"].get("error"):
        success = False
    rank, size, eta = doc.get("rank"), doc.get("queue_size"), doc.get("rank_eta")
    return Message(
        msg=doc["msg"],
        event_id=eid if isinstance(eid, str) and eid else None,
        success=success if isinstance(success, bool) else None,
        rank=rank if isinstance(rank, int) and not isinstance(rank, bool) else None,
        queue_size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        rank_eta=float(eta) if isinstance(eta, int | float) and not isinstance(eta, bool) else None,
    )


@dataclass(frozen=True, slots=True)
class Ending:
    """What a stream frame ends: one event (``event_id``), or the whole session."""

    event_id: str | None  # None: every event of the session
    success: bool
    why: str  # the message: process_completed, close_stream, unexpected_error, complete, error


def ending(ev: SSEEvent, call_event_id: str | None = None) -> Ending | None:
    """Whether an SSE event ends a gated event. ``call_event_id``: the stream is a
    ``/call/<api>/<event_id>`` stream (its ``event:`` names say it), else queue/data."""
    if call_event_id is not None:
        if ev.event in CALL_ENDS:
            return Ending(call_event_id, ev.event == "complete", ev.event)
        return None
    m = parse_message(ev.data)
    if m is None:
        return None
    if m.msg in EVENT_ENDS and m.event_id is not None:
        return Ending(m.event_id, m.success is not False, m.msg)
    if m.msg in SESSION_ENDS:  # with an event_id (5.x errors may name one): that event only
        return Ending(m.event_id, m.msg == "close_stream", m.msg)
    return None


def frame(msg: dict[str, Any]) -> bytes:
    """One SSE ``data:`` frame carrying ``msg`` as JSON."""
    return b"data: " + json.dumps(msg, ensure_ascii=False).encode() + b"\n\n"
