"""Reading a gated Gradio event's frames (``gradio.frames``): the engine's progress, and
which completions carry the generation's result; the record of an answer built in memory
(``proxy.record.answered``); the status line with the engine's progress."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from gatekeeper.cli.status_view import generation_line
from gatekeeper.gradio.frames import Progress, carries_result, decode, progress_of, result_outputs
from gatekeeper.proxy.record import RequestRecord, answered


def unit(**kw: Any) -> dict[str, Any]:
    return {"index": None, "length": None, "unit": "steps", "progress": None, "desc": None, **kw}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # gr.Progress called with a fraction (gradio 6.31 on the wire)
        (
            {"msg": "progress", "progress_data": [unit(progress=0.1, desc="Generating")]},
            Progress(0.1, "Generating"),
        ),
        # a tqdm bar (track_tqdm=True): index/length, no fraction
        (
            {"msg": "progress", "progress_data": [unit(index=3, length=12, desc="steps")]},
            Progress(0.25, "steps"),
        ),
        # nested bars: the outermost that yields a fraction
        (
            {
                "msg": "progress",
                "progress_data": [unit(desc="Loading"), unit(index=1, length=4, desc="inner")],
            },
            Progress(0.25, "inner"),
        ),
        # steps of unknown length: a description, no fraction
        (
            {"msg": "progress", "progress_data": [unit(index=7, desc="tokens")]},
            Progress(None, "tokens"),
        ),
        # out of range is clamped; an empty description is none
        ({"msg": "progress", "progress_data": [unit(progress=1.7, desc="")]}, Progress(1.0, None)),
        ({"msg": "progress", "progress_data": []}, None),
        ({"msg": "progress"}, None),
        ({"msg": "progress", "progress_data": ["junk"]}, None),
        ({"msg": "progress", "progress_data": [unit(progress=True)]}, Progress(None, None)),
        ({"msg": "estimation", "rank": 0}, None),
        ("not a dict", None),
    ],
)
def test_progress_of(doc: Any, expected: Progress | None) -> None:
    """A progress frame's fraction and description, outermost bar first; anything else: None."""
    assert progress_of(doc) == expected


# The shape of gradio 6.31's /config for the test app (tests/gradio_app.py): generate_song's
# outputs are [audio, state, textbox]; echo's is a textbox.
CONFIG = {
    "components": [
        {"id": 3, "type": "textbox"},
        {"id": 8, "type": "button"},
        {"id": 10, "type": "audio"},
        {"id": 2, "type": "state"},
        {"id": 11, "type": "textbox"},
        {"id": 12, "type": "file"},
    ],
    "dependencies": [
        {"id": 0, "outputs": [10, 2, 11]},
        {"id": 1, "outputs": [10, 2, 11]},
        {"id": 2, "outputs": [11]},
        {"id": 3, "outputs": [11, 12, 10]},
        {"id": 4},
        "junk",
    ],
}


def test_result_outputs_are_the_audio_and_file_outputs_of_each_function() -> None:
    """The result of a function is its outputs whose component is audio, file, video...;
    a text-only function has none; a dependency without outputs is left out."""
    assert result_outputs(CONFIG) == {0: (0,), 1: (0,), 2: (), 3: (1, 2)}
    assert result_outputs({"dependencies": "x"}) == {}
    assert result_outputs(None) == {}


def completed(*data: Any) -> dict[str, Any]:
    return {"msg": "process_completed", "success": True, "output": {"data": list(data)}}


WAV = {"path": "/tmp/x.wav", "url": "http://h/gradio_api/file=/tmp/x.wav"}


@pytest.mark.parametrize(
    ("doc", "positions", "carries"),
    [
        (completed(WAV, [], "ok"), (0,), True),
        # SongGeneration's answer to invalid lyrics: no audio, a JSON error string
        (completed(None, [], '{"error": "invalid lyrics"}'), (0,), False),
        (completed(None, WAV, None), (0, 1), True),
        (completed(None, None), (0, 1), False),
        (completed("x"), (3,), False),  # the output list is shorter than the config says
        ({"msg": "process_completed", "success": True, "output": {}}, (0,), False),
        # nothing known to be the result (text-only function, /config unread): it counts
        (completed(None, "text"), (), True),
        (completed(None), None, True),
    ],
)
def test_carries_result(
    doc: dict[str, Any], positions: tuple[int, ...] | None, carries: bool
) -> None:
    """A successful completion is a generation only if one of its result outputs is set."""
    assert carries_result(doc, positions) is carries


@pytest.mark.parametrize(
    ("data", "doc"),
    [('{"msg":"x"}', {"msg": "x"}), ("ALIVE", None), ("{broken", None), ("[1]", None)],
)
def test_decode(data: str, doc: dict[str, Any] | None) -> None:
    """A frame's JSON object, or None for anything else."""
    assert decode(data) == doc


def record() -> RequestRecord:
    return RequestRecord("rid", "127.0.0.1", "POST", "/gradio_api/queue/join")


def test_answered_logs_the_answer_built_in_memory() -> None:
    """A refusal told in a Gradio stream is answered 200 with a small JSON body: the record
    says 200 and its bytes, not the 503 decided on the way."""
    rec = record()
    rec.status, rec.reason = 503, "busy"
    resp = web.json_response({"event_id": "gatekeeper-0123"})
    answered(rec, resp)
    assert rec.status == 200 and rec.bytes_out == len(resp.body)  # type: ignore[arg-type]
    assert rec.reason == "busy"  # the refusal stays in its own field


def test_answered_leaves_a_streamed_answer_alone() -> None:
    """A streamed answer counted its own status and bytes as it went."""
    rec = record()
    rec.status, rec.bytes_out = 200, 12345
    answered(rec, web.StreamResponse(status=200))
    assert (rec.status, rec.bytes_out) == (200, 12345)


def running(**extra: Any) -> dict[str, Any]:
    gen = {"route": "song", "elapsed_seconds": 30.0, "expected_seconds": 120.0, **extra}
    return {"running": [gen]}


@pytest.mark.parametrize(
    ("doc", "percent", "label"),
    [
        (running(), " 25%", None),
        (running(progress=None, progress_description=None), " 25%", None),
        (running(progress=0.5, progress_description="Generating"), " 50%", "(engine: Generating)"),
        (running(progress=0.75, progress_description=None), " 75%", "(engine)"),
        (running(progress=None, progress_description="tokens"), " 25%", "(engine: tokens)"),
    ],
)
def test_generation_line_shows_the_engines_progress(
    doc: dict[str, Any], percent: str, label: str | None
) -> None:
    """`gatekeeper status`: the engine's own progress wins over elapsed/expected, and its
    description is shown."""
    line = generation_line(doc)
    assert percent in line
    if label is None:
        assert "engine" not in line
    else:
        assert label in line
