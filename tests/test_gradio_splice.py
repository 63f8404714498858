"""The pure pieces of a spliced Gradio session stream (issue #19): frames cut whole,
event ids mapped both ways, frames rewritten, close_stream held back, estimation frames."""

from __future__ import annotations

import json

import pytest

from gatekeeper.gradio.pipes import data_path
from gatekeeper.gradio.splice import (
    CLOSE_STREAM,
    Estimate,
    Framer,
    IdMap,
    data_of,
    estimation,
    failure,
    forward_close,
    message_of,
    rewrite,
)
from gatekeeper.gradio.wire import frame


def msg(raw: bytes) -> dict[str, object]:
    doc = message_of(raw)
    assert doc is not None
    return doc


@pytest.mark.parametrize(
    ("chunks", "frames"),
    [
        ([b"data: a\n\n"], [b"data: a\n\n"]),
        ([b"data: a\n\ndata: b\n\n"], [b"data: a\n\n", b"data: b\n\n"]),
        ([b"data: a", b"\n", b"\ndata: b\n"], [b"data: a\n\n"]),
        ([b"data: a\r\n\r\n"], [b"data: a\r\n\r\n"]),
        ([b"data: a\n\n", b"data: b\n\n"], [b"data: a\n\n", b"data: b\n\n"]),
        ([b"da", b"ta: {}\n\n"], [b"data: {}\n\n"]),
        ([b""], []),
    ],
)
def test_the_framer_hands_on_whole_frames_only(chunks: list[bytes], frames: list[bytes]) -> None:
    """However the app's bytes are chunked, frames come out whole and in order."""
    f = Framer()
    out = [raw for chunk in chunks for raw in f.feed(chunk)]
    assert out == frames


def test_the_framer_hands_on_an_oversized_frame_as_it_is() -> None:
    """A "frame" over the limit is not held whole: handed on as it came."""
    f = Framer(limit=8)
    assert f.feed(b"data: 0123456789") == [b"data: 0123456789"]
    assert f.feed(b"\n\n") == [b"\n\n"]


def test_the_id_map_goes_both_ways_and_forgets() -> None:
    """gatekeeper's id <-> the app's; forgetting one forgets both directions."""
    ids = IdMap()
    ids.bind("gatekeeper-1", "app1")
    assert ids.to_app("gatekeeper-1") == "app1" and ids.to_ours("app1") == "gatekeeper-1"
    assert ids.to_ours("other") is None and len(ids) == 1
    ids.forget("gatekeeper-1")
    assert ids.to_app("gatekeeper-1") is None and ids.to_ours("app1") is None and not ids


@pytest.mark.parametrize(
    ("raw", "event_id", "same"),
    [
        # a frame of an event gatekeeper mapped: the app's id becomes ours
        (frame({"msg": "process_starts", "event_id": "app1", "eta": 3}), "gatekeeper-1", False),
        # Gradio's compact JSON, a progress frame
        (
            b'data: {"msg":"progress","event_id":"app1","progress_data":[]}\n\n',
            "gatekeeper-1",
            False,
        ),
        # another event of the session (admitted directly, or a light function): untouched
        (frame({"msg": "process_starts", "event_id": "app2"}), "app2", True),
        # session frames carry no id: untouched
        (CLOSE_STREAM, None, True),
        (b'data: {"msg":"heartbeat","event_id":null}\n\n', None, True),
        # not a Gradio message at all
        (b"data: ALIVE\n\n", None, True),
    ],
)
def test_rewrite_replaces_the_apps_id_by_ours(raw: bytes, event_id: str | None, same: bool) -> None:
    """Only a frame naming a mapped app id changes; every other frame passes byte for byte."""
    ids = IdMap()
    ids.bind("gatekeeper-1", "app1")
    out, doc = rewrite(raw, ids)
    assert (out == raw) is same
    if doc is not None:
        assert doc.get("event_id") == event_id
        data = data_of(out)
        assert data is not None and json.loads(data)["event_id"] == event_id
        assert out.endswith(b"\n\n")


def test_rewrite_keeps_every_other_field() -> None:
    """The rewritten frame is the app's message with the id changed, nothing else."""
    ids = IdMap()
    ids.bind("gatekeeper-9", "app9")
    doc = {"msg": "process_completed", "event_id": "app9", "success": True, "output": {"d": [1]}}
    out, _ = rewrite(frame(doc), ids)
    assert msg(out) == {**doc, "event_id": "gatekeeper-9"}


@pytest.mark.parametrize(("held", "forward"), [(0, True), (1, False), (3, False)])
def test_close_stream_only_when_gatekeeper_holds_nothing(held: int, forward: bool) -> None:
    """The app's close_stream reaches the client only when no event of the session waits
    (or is being forwarded) in gatekeeper."""
    assert forward_close(held) is forward


def test_an_estimation_frame_says_rank_queue_size_and_eta() -> None:
    """Gradio's estimation fields: 0-based rank, everyone waiting, seconds to done."""
    doc = msg(estimation("gatekeeper-1", 1, 2, 187.04))
    assert doc == {
        "msg": "estimation",
        "event_id": "gatekeeper-1",
        "rank": 1,
        "queue_size": 2,
        "rank_eta": 187.0,
    }


def test_a_failure_frame_is_a_visible_gradio_error() -> None:
    """A waiting event that ends unrun: a failed process_completed with the text shown."""
    doc = msg(failure("gatekeeper-1", "draining (waited 12 s)"))
    assert doc["msg"] == "process_completed" and doc["success"] is False
    out = doc["output"]
    assert isinstance(out, dict)
    assert out["error"] == "draining (waited 12 s)" and out["visible"] is True


@pytest.mark.parametrize(
    ("rank", "size", "eta", "at", "news"),
    [
        (1, 2, 100.0, 10.0, False),  # the same, 0 s later
        (1, 2, 95.0, 15.0, False),  # counted down exactly
        (1, 2, 95.5, 15.0, False),  # within the slack
        (1, 2, 97.0, 15.0, True),  # the ETA moved 2 s off its countdown (a slot overran)
        (0, 2, 90.0, 20.0, True),  # moved up
        (1, 3, 90.0, 20.0, True),  # someone else joined
        (1, 2, 0.0, 200.0, False),  # counted down to 0, and still 0
    ],
)
def test_an_estimate_is_sent_again_only_with_news(
    rank: int, size: int, eta: float, at: float, news: bool
) -> None:
    """Sent again when the rank or the queue size changed, or the ETA left its countdown."""
    told = Estimate(1, 2, 100.0, 10.0)
    assert told.news(rank, size, eta, at) is news


@pytest.mark.parametrize(
    ("join", "data"),
    [
        ("/gradio_api/queue/join?", "/gradio_api/queue/data?session_hash=s1"),
        ("/gradio_api/queue/join", "/gradio_api/queue/data?session_hash=s1"),
        ("/queue/join", "/queue/data?session_hash=s1"),
        ("/song/gradio_api/queue/join/", "/song/gradio_api/queue/data?session_hash=s1"),
    ],
)
def test_the_sessions_stream_is_beside_its_join(join: str, data: str) -> None:
    """gatekeeper's own reader opens the queue/data route of the join's app root."""
    assert data_path(join, "s1") == data
