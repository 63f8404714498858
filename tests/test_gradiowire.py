"""Table tests of the Gradio protocol core (gradiowire, PURE): paths, joins, SSE, endings."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from gatekeeper.gradio.wire import (
    Ending,
    Gating,
    GradioPath,
    Join,
    Kind,
    SSEEvent,
    SSEParser,
    UnreadableCoding,
    api_names,
    classify,
    decoded_body,
    ending,
    event_id_of,
    parse_join,
    parse_message,
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/gradio_api/queue/join", GradioPath(Kind.JOIN)),  # 5.x / 6.x
        ("POST", "/queue/join", GradioPath(Kind.JOIN)),  # 4.x
        ("POST", "/song/gradio_api/queue/join", GradioPath(Kind.JOIN, "/song")),  # root_path
        ("POST", "/song/queue/join/", GradioPath(Kind.JOIN, "/song")),
        ("GET", "/queue/join", GradioPath(Kind.OTHER)),
        ("GET", "/gradio_api/queue/data", GradioPath(Kind.DATA)),
        ("GET", "/a/b/queue/data", GradioPath(Kind.DATA, "/a/b")),
        (
            "GET",
            "/gradio_api/heartbeat/abc123",
            GradioPath(Kind.HEARTBEAT, session_hash="abc123"),
        ),
        ("POST", "/gradio_api/call/generate_song", GradioPath(Kind.CALL, api_name="generate_song")),
        (
            "GET",
            "/gradio_api/call/generate_song/ev1",
            GradioPath(Kind.CALL_STREAM, api_name="generate_song", event_id="ev1"),
        ),
        (  # 6.x keyword calls: gated like /call (they were passed ungated)
            "POST",
            "/gradio_api/call/v2/generate_song",
            GradioPath(Kind.CALL, api_name="generate_song"),
        ),
        (
            "GET",
            "/song/gradio_api/call/v2/generate_song/ev1",
            GradioPath(Kind.CALL_STREAM, "/song", api_name="generate_song", event_id="ev1"),
        ),
        (
            "POST",
            "/gradio_api/run/generate_song",
            GradioPath(Kind.DIRECT, api_name="generate_song"),
        ),
        ("POST", "/run/predict", GradioPath(Kind.DIRECT, api_name="predict")),
        ("POST", "/api/predict", GradioPath(Kind.DIRECT, api_name="predict")),  # 3.x
        ("POST", "/gradio_api/api/echo", GradioPath(Kind.DIRECT, api_name="echo")),
        ("POST", "/gradio_api/cancel", GradioPath(Kind.CANCEL)),
        ("GET", "/", GradioPath(Kind.OTHER)),
        ("GET", "/config", GradioPath(Kind.OTHER)),
        ("POST", "/gradio_api/upload", GradioPath(Kind.OTHER)),
        ("GET", "/gradio_api/file=/tmp/x.wav", GradioPath(Kind.OTHER)),
        ("GET", "/gradio_api/queue/status", GradioPath(Kind.OTHER)),
    ],
)
def test_classify(method: str, path: str, expected: GradioPath) -> None:
    """Gradio's routes by their tail, with or without /gradio_api, under any root_path."""
    assert classify(method, path) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"fn_index": 0, "session_hash": "s1", "data": [], "trigger_id": 9}', Join(0, "s1")),
        (b'{"data": ["x"]}', Join(None, None)),  # a /call body
        (b"{}", Join(None, None)),
        (b"not json", "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object, not list"),
        (b'{"fn_index": "0"}', "fn_index must be a non-negative integer, not '0'"),
        (b'{"fn_index": -1}', "fn_index must be a non-negative integer, not -1"),
        (b'{"fn_index": true}', "fn_index must be a non-negative integer, not True"),
        (b'{"fn_index": 1, "session_hash": ""}', "session_hash must be a non-empty string"),
        (b'{"fn_index": 1, "session_hash": 5}', "session_hash must be a non-empty string"),
        (b"\xff\xfe", "the body is not JSON"),
    ],
)
def test_parse_join(body: bytes, expected: Join | str) -> None:
    got = parse_join(body)
    if isinstance(expected, str):
        assert isinstance(got, str) and got.startswith(expected), got
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"event_id": "e1"}', "e1"),
        (b'{"event_id": ""}', None),
        (b'{"event_id": 5}', None),
        (b'{"detail": "Queue is full"}', None),
        (b"<html>", None),
    ],
)
def test_event_id_of(body: bytes, expected: str | None) -> None:
    assert event_id_of(body) == expected


JOIN_TEXT = b'{"fn_index": 0, "session_hash": "s"}'


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("body", "codings", "expected"),
    [
        (JOIN_TEXT, [], JOIN_TEXT),
        (JOIN_TEXT, ["identity"], JOIN_TEXT),
        (gzip.compress(JOIN_TEXT), ["gzip"], JOIN_TEXT),
        (gzip.compress(JOIN_TEXT), ["X-GZIP"], JOIN_TEXT),
        (zlib.compress(JOIN_TEXT), ["deflate"], JOIN_TEXT),
        (_raw_deflate(JOIN_TEXT), ["deflate"], JOIN_TEXT),  # what some clients send
        # Codings apply in the order listed: undone last first, header repeated or not.
        (gzip.compress(zlib.compress(JOIN_TEXT)), ["deflate, gzip"], JOIN_TEXT),
        (gzip.compress(zlib.compress(JOIN_TEXT)), ["deflate", "gzip"], JOIN_TEXT),
        # Over the limit once decoded: unknown (a zip bomb is never inflated whole).
        (gzip.compress(b" " * 10_000_000), ["gzip"], None),
    ],
)
def test_decoded_body(body: bytes, codings: list[str], expected: bytes | None) -> None:
    assert decoded_body(body, codings, 256 * 1024) == expected


@pytest.mark.parametrize(
    ("body", "codings", "error", "says"),
    [
        (gzip.compress(JOIN_TEXT)[:-8], ["gzip"], ValueError, "gzip body is cut short"),
        (gzip.compress(JOIN_TEXT) + b"x", ["gzip"], ValueError, "bytes after its end"),
        (JOIN_TEXT, ["gzip"], ValueError, "not valid gzip"),
        (JOIN_TEXT, ["deflate"], ValueError, "not valid deflate"),
        (JOIN_TEXT, ["br"], UnreadableCoding, "'br' cannot be read"),
        (gzip.compress(JOIN_TEXT), ["gzip, zstd"], UnreadableCoding, "'zstd'"),
    ],
)
def test_decoded_body_refuses(body: bytes, codings: list[str], error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        decoded_body(body, codings, 256 * 1024)


def test_api_names_from_config() -> None:
    """4.x+ dependencies carry their fn_index as id; 3.x by position; no api_name: left out."""
    doc = {
        "dependencies": [
            {"id": 0, "api_name": "generate_song"},
            {"id": 1, "api_name": "generate_song_1"},
            {"id": 5, "api_name": None},
            {"api_name": "/legacy"},
            "junk",
        ]
    }
    assert api_names(doc) == {0: "generate_song", 1: "generate_song_1", 3: "legacy"}
    assert api_names({}) == {} and api_names([]) == {}


@pytest.mark.parametrize(
    ("gating", "fn", "api", "gated"),
    [
        (Gating(), 3, None, True),  # no filter: every queued function
        (Gating(fn_index=frozenset({0, 1})), 1, None, True),
        (Gating(fn_index=frozenset({0, 1})), 2, "echo", False),
        (Gating(fn_index=frozenset({0, 1})), None, None, False),
        (Gating(api_name=frozenset({"generate_song"})), 0, "generate_song", True),
        (Gating(api_name=frozenset({"generate_song"})), 2, "echo", False),
        (Gating(api_name=frozenset({"generate_song"})), 2, None, True),  # unknown: fail closed
        (Gating(frozenset({0}), frozenset({"generate_song"})), 0, None, True),
        (Gating(frozenset({0}), frozenset({"generate_song"})), 2, None, False),
        (Gating(frozenset({0}), frozenset({"generate_song"})), 7, "generate_song", True),
    ],
)
def test_gating(gating: Gating, fn: int | None, api: str | None, gated: bool) -> None:
    assert gating.gated(fn, api) is gated


def frames(*msgs: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(m).encode() + b"\n\n" for m in msgs)


def test_sse_parser_every_split_gives_the_same_events() -> None:
    """Fed one byte at a time, in two halves, or whole: the same events (LF, CRLF, CR)."""
    stream = (
        b": comment\n"
        b'data: {"msg": "estimation", "event_id": "e1", "rank": 0}\n\n'
        b"event: complete\r\ndata: [1,\r\ndata: 2]\r\n\r\n"
        b"data: ALIVE\r\r"
        b"retry: 10\nid: 7\ndata: x\n\n"
        b"data: no end yet"
    )
    want = [
        SSEEvent("message", '{"msg": "estimation", "event_id": "e1", "rank": 0}'),
        SSEEvent("complete", "[1,\n2]"),
        SSEEvent("message", "ALIVE"),
        SSEEvent("message", "x"),
    ]
    whole = SSEParser().feed(stream)
    assert whole == want
    for cut in range(len(stream)):
        p = SSEParser()
        assert p.feed(stream[:cut]) + p.feed(stream[cut:]) == want, cut
    p = SSEParser()
    assert [e for i in range(len(stream)) for e in p.feed(stream[i : i + 1])] == want


def test_sse_parser_skips_an_oversized_event_and_recovers() -> None:
    """An event over the bound is dropped (never buffered whole); the next one parses."""
    p = SSEParser(max_event_bytes=100)
    big = b"data: " + b"x" * 500 + b"\n\n"
    got = p.feed(big[:200]) + p.feed(big[200:]) + p.feed(b"data: after\n\n")
    assert got == [SSEEvent("message", "after")] and p.oversized == 1
    p = SSEParser(max_event_bytes=100)
    many = b"".join(b"data: " + b"y" * 30 + b"\n" for _ in range(10)) + b"\n"
    assert p.feed(many + b"data: ok\n\n") == [SSEEvent("message", "ok")] and p.oversized == 1


@pytest.mark.parametrize(
    ("data", "call", "expected"),
    [
        ('{"msg": "process_completed", "event_id": "e1", "success": true}', None, ("e1", True)),
        ('{"msg": "process_completed", "event_id": "e1", "success": false}', None, ("e1", False)),
        (
            '{"msg": "process_completed", "event_id": "e1", "output": {"error": "boom"}}',
            None,
            ("e1", False),
        ),
        ('{"msg": "process_completed", "event_id": null}', None, None),  # whose? not ours
        ('{"msg": "close_stream", "event_id": null}', None, (None, True)),
        ('{"msg": "close_stream"}', None, (None, True)),
        ('{"msg": "unexpected_error", "message": "x"}', None, (None, False)),
        ('{"msg": "unexpected_error", "event_id": "e2"}', None, ("e2", False)),
        ('{"msg": "process_starts", "event_id": "e1"}', None, None),
        ('{"msg": "estimation", "event_id": "e1", "rank": 1}', None, None),
        ('{"msg": "heartbeat"}', None, None),
        ("ALIVE", None, None),
        ("{not json", None, None),
    ],
)
def test_queue_data_endings(
    data: str, call: str | None, expected: tuple[object, ...] | None
) -> None:
    got = ending(SSEEvent("message", data), call)
    assert (None if got is None else (got.event_id, got.success)) == expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("complete", Ending("ev", True, "complete")),
        ("error", Ending("ev", False, "error")),
        ("generating", None),
        ("heartbeat", None),
        ("message", None),
    ],
)
def test_call_stream_endings(event: str, expected: Ending | None) -> None:
    """A /call/<api>/<event_id> stream names its end in the SSE event: field."""
    assert ending(SSEEvent(event, "[null]"), call_event_id="ev") == expected


def test_parse_message_fields() -> None:
    m = parse_message(
        '{"msg": "estimation", "event_id": "e", "rank": 2, "queue_size": 3, "rank_eta": 9.5}'
    )
    assert m is not None and (m.rank, m.queue_size, m.rank_eta) == (2, 3, 9.5)
    assert parse_message('{"no": "msg"}') is None
