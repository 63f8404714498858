"""A small real Gradio app shaped like the SongGeneration demo, for Gradio-aware tests.

Modelled on tencent-ailab/SongGeneration ``tools/gradio/app.py``: ``gr.Blocks``, a sync
``generate_song(lyric, description, prompt_audio, genre, history, progress=gr.Progress(
track_tqdm=True))`` (an optional ``gr.Audio`` prompt, uploaded through ``/upload``, may be
None; a genre dropdown), two ``.click`` listeners on that same function (so one
concurrency group, Gradio's default limit 1), a ``gr.State`` and an audio output. Unlike
the demo it also has a light ``echo`` listener (``sleep=N`` makes it take N s), and it is
mounted in a FastAPI app so it can expose counters of its own (running generations and
their peak)::

    python tests/gradio_app.py --port 7860 --seconds 2 [--root-path /x]

    GET  /_app/stats  -> {"active": 0, "peak": 1, "started": 3, "completed": 3}
    POST /_app/reset  -> zeroes the counters
    POST /_app/finish -> {"finished": n}: every running generation ends now, with its song

A description ``seconds=N`` makes that one generation last N seconds instead. The info
output says ``generated N song(s), <genre>`` and, with a prompt, its file name and size.
A test that must look at a song while it runs gives it hours and ends it with
``/_app/finish`` once it has seen what it is about, however slow the box: no length to
guess.
Lyrics starting with ``invalid`` get what SongGeneration answers for lyrics it cannot
sing: no audio (``None``) and a JSON error string, as a successful completion.

API names (from ``/config`` ``dependencies[]``, gradio 6.31): ``generate_song`` (fn_index 0,
button "Generate"), ``generate_song_1`` (fn_index 1, button "Generate again", no
``api_name`` given: Gradio derives it from the function name), ``echo`` (fn_index 2).

It prints ``gradio-app listening on http://127.0.0.1:P`` once the socket accepts
connections, and exits 0 on SIGTERM. It makes no network calls: analytics, the version
check and the Hugging Face hub are switched off before gradio is imported.
"""

from __future__ import annotations

import os

# Before gradio is imported: it reads these at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import argparse
import asyncio
import inspect
import json
import math
import signal
import struct
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI

SAMPLE_RATE = 8000


class Stats:
    """Counts generations inside ``generate_song``; Gradio runs sync fns in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)
        self.active = self.peak = self.started = self.completed = 0
        self.epoch = 0  # advanced by finish_running: generations started before it end
        # Generations still in their sleep loop: those finish_running ends (one past its
        # loop, writing its song, is ending anyway and is not counted).
        self.looping = 0

    def enter(self) -> int:
        """Count a generation in; the epoch it runs in (see :meth:`nap`)."""
        with self._lock:
            self.active += 1
            self.started += 1
            self.peak = max(self.peak, self.active)
            self.looping += 1
            return self.epoch

    def looped(self) -> None:
        """The generation left its sleep loop."""
        with self._lock:
            self.looping -= 1

    def nap(self, seconds: float, epoch: int) -> bool:
        """Sleep ``seconds``; True at once when ``finish_running`` ended ``epoch``."""
        with self._finished:
            return self._finished.wait_for(lambda: self.epoch != epoch, timeout=seconds)

    def finish_running(self) -> int:
        """End every running generation now (each returns its song); how many."""
        with self._finished:
            self.epoch += 1
            self._finished.notify_all()
            return self.looping

    def leave(self) -> None:
        with self._lock:
            self.active -= 1
            self.completed += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "active": self.active,
                "peak": self.peak,
                "started": self.started,
                "completed": self.completed,
            }

    def reset(self) -> None:
        with self._lock:
            # A generation still running keeps counting as active.
            self.peak = self.active
            self.started = self.completed = 0


def write_wav(path: Path, seconds: float = 0.5, freq: float = 440.0) -> Path:
    """A short mono 16-bit sine wave: a valid WAV the browser's <audio> accepts."""
    n = int(SAMPLE_RATE * seconds)
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / SAMPLE_RATE)))
        for i in range(n)
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(frames)
    return path


# SongGeneration's genre choices (its dropdown's, "Pop" the default).
GENRES = [
    "Pop", "R&B", "Dance", "Jazz", "Folk", "Rock", "Chinese Style", "Chinese Tradition",
    "Metal", "Reggae", "Chinese Opera", "Auto",
]  # fmt: skip


def build(seconds: float, out_dir: Path, stats: Stats) -> gr.Blocks:
    """The Blocks app; ``seconds`` is how long one generation sleeps."""

    def generate_song(
        lyric: str,
        description: str,
        prompt_audio: str | None,
        genre: str,
        history: list[str],
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
    ) -> tuple[str | None, list[str], str]:
        epoch = stats.enter()
        try:
            # A description "seconds=N" makes this one generation last N seconds.
            length = seconds
            if description.startswith("seconds="):
                length = float(description.split("=", 1)[1])
            steps = max(1, int(length / 0.1))
            progress(0, desc="Starting")
            try:
                for i in range(steps):
                    if stats.nap(length / steps, epoch):
                        break
                    progress((i + 1) / steps, desc="Generating")
            finally:
                stats.looped()
            if lyric.startswith("invalid"):
                # SongGeneration's answer to lyrics it cannot sing: no audio and a JSON
                # error string, as a successful completion.
                return None, history or [], json.dumps({"error": "invalid lyrics"})
            fd, name = tempfile.mkstemp(suffix=".wav", dir=out_dir)
            os.close(fd)
            write_wav(Path(name), freq=220.0 + 20 * (len(lyric) % 20))
            history = [*(history or []), lyric]
            info = f"generated {len(history)} song(s), {genre}"
            if prompt_audio:  # the uploaded prompt, as the app received it
                info += (
                    f", prompt {Path(prompt_audio).name} ({Path(prompt_audio).stat().st_size} B)"
                )
            return name, history, info
        finally:
            stats.leave()

    def echo(text: str) -> str:
        """The light function (nobody gates it); ``sleep=N`` makes it take N seconds."""
        if text.startswith("sleep="):
            time.sleep(float(text.split("=", 1)[1]))
        return text

    with gr.Blocks(title="gatekeeper test app") as demo:
        gr.Markdown("# Song generation (test app)")
        history = gr.State([])
        with gr.Row():
            lyric = gr.Textbox(label="Lyrics", value="[verse] la la la", lines=3)
            description = gr.Textbox(label="Description", value="pop, happy")
        with gr.Row():
            prompt_audio = gr.Audio(label="Prompt audio (optional)", type="filepath")
            genre = gr.Dropdown(label="Genre", choices=GENRES, value="Pop")
        with gr.Row():
            generate = gr.Button("Generate", variant="primary")
            again = gr.Button("Generate again")
        audio = gr.Audio(label="Song", type="filepath")
        info = gr.Textbox(label="Info")
        inputs = [lyric, description, prompt_audio, genre, history]
        # Two listeners on the same fn, as SongGeneration has: one concurrency group.
        generate.click(
            fn=generate_song,
            inputs=inputs,
            outputs=[audio, history, info],
            api_name="generate_song",
        )
        again.click(fn=generate_song, inputs=inputs, outputs=[audio, history, info])
        with gr.Row():
            text = gr.Textbox(label="Echo input", value="hello")
            echoed = gr.Textbox(label="Echo output")
            echo_button = gr.Button("Echo")
        echo_button.click(fn=echo, inputs=text, outputs=echoed, api_name="echo")
    return demo


def make_app(seconds: float, out_dir: Path, root_path: str | None = None) -> FastAPI:
    stats = Stats()
    app = FastAPI()

    @app.get("/_app/stats")
    def get_stats() -> dict[str, int]:
        return stats.snapshot()

    @app.post("/_app/reset")
    def reset() -> dict[str, Any]:
        stats.reset()
        return {"ok": True}

    @app.post("/_app/finish")
    def finish() -> dict[str, int]:
        return {"finished": stats.finish_running()}

    demo = build(seconds, out_dir, stats)
    extra: dict[str, Any] = {}
    if "ssr_mode" in inspect.signature(gr.mount_gradio_app).parameters:
        extra["ssr_mode"] = False  # gradio 5+; 4.x (tests/test_gradio4_e2e.py) has no SSR
    return gr.mount_gradio_app(
        app, demo, path="/", root_path=root_path, allowed_paths=[str(out_dir)], **extra
    )


class Server(uvicorn.Server):
    """Prints the ready line once the socket is bound and accepting."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"gradio-app listening on http://127.0.0.1:{port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--root-path", default=None)
    parser.add_argument("--out-dir", default=None, help="where generated WAVs go (a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gradio-app-") as tmp:
        out_dir = Path(args.out_dir or tmp).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        app = make_app(args.seconds, out_dir, args.root_path)
        # uvicorn handles SIGTERM during serve() (stops accepting, drains, returns) and
        # then re-raises it to the handler that was there before: make that one a no-op so
        # the process exits 0 after its clean shutdown instead of dying of the signal.
        signal.signal(signal.SIGTERM, lambda *_: None)
        # A gradio_client's heartbeat stream stays open after its close() until the next
        # heartbeat (15 s): waiting for it made a stop take up to 15 s. No test asks the
        # app to drain: open streams get a second, then are closed.
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        server = Server(config)
        asyncio.run(server.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
