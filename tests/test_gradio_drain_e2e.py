"""Gradio joins waiting in gatekeeper at SIGTERM and after a restart (issue #19), end to
end: the real CLI in front of the real test Gradio app, driven by gradio_client (the
rules and clients of ``test_gradio_queue_e2e``; its own gatekeeper, which it stops)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from gradio_support import HELD, finish, get_json, require_gradio, song, start_gradio_app
from support import start_gatekeeper
from test_gradio_queue_e2e import _OPEN, RULES, client

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_sigterm_fails_the_waiting_and_finishes_the_running(tmp_path: Path) -> None:
    """SIGTERM with one event running and two waiting: the waiting two fail at once with
    gatekeeper's draining text; the running one gets its song; the process exits 0, and
    started again it holds no phantom slot and no waiter."""
    require_gradio()
    from gradio_client.exceptions import AppError

    # The running songs are HELD: each ends when the test says (finish), never on a clock.
    app, app_url = start_gradio_app(tmp_path, seconds=0.2)
    try:
        # linger: the running song's file is fetched after its event ended
        rules = RULES.replace("linger: 0s", "linger: 2s")
        gk, url, admin = start_gatekeeper(
            tmp_path, rules + f"jobs: {{dir: '{tmp_path / 'state'}'}}\n", app_url
        )
        try:
            cls = [client(url, k) for k in ("s1", "s2", "s3")]
            jobs = [cls[0].submit(*song("[verse] s", HELD), api_name="/generate_song")]
            while asyncio.run(get_json(app_url + "/_app/stats"))["active"] != 1:
                time.sleep(0.1)
            jobs += [
                cl.submit(*song("[verse] s", "pop"), api_name="/generate_song") for cl in cls[1:]
            ]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                doc = asyncio.run(get_json(admin + "/status"))
                if doc["in_flight"] == 1 and doc["queue"]["waiting"] == 2:
                    break
                time.sleep(0.1)
            gk.signal(signal.SIGTERM)
            t0 = time.monotonic()
            failures = []
            for j in jobs[1:]:
                with pytest.raises(AppError) as failed:
                    j.result(10)
                failures.append(str(failed.value))
            assert time.monotonic() - t0 < 5  # at once, not after the running song
            assert all("restarting" in f and "waited" in f for f in failures), failures
            asyncio.run(finish(app_url))  # the running song ends only now: it was waited for
            audio, _ = jobs[0].result(30)
            assert Path(audio).suffix == ".wav"
            assert gk.wait(30) == 0
            assert "Traceback" not in gk.output()
            # Started again on the same state directory (with max_wait 1s): no phantom
            # slot, nobody waiting, the next song goes through, and a join that waits past
            # max_wait gets Gradio's failure naming the wait; the app never runs it.
            short = rules.replace(
                "client_key: header:X-Client\n", "client_key: header:X-Client\n    max_wait: 1s\n"
            )
            gk2, url2, admin2 = start_gatekeeper(
                tmp_path, short + f"jobs: {{dir: '{tmp_path / 'state'}'}}\n", app_url
            )
            try:
                doc = asyncio.run(get_json(admin2 + "/status"))
                assert doc["in_flight"] == 0 and doc["queue"]["waiting"] == 0
                after = client(url2, "after").submit(
                    *song("[verse] again", HELD), api_name="/generate_song"
                )
                while asyncio.run(get_json(app_url + "/_app/stats"))["active"] != 1:
                    time.sleep(0.1)
                started = asyncio.run(get_json(app_url + "/_app/stats"))["started"]
                with pytest.raises(AppError) as timed_out:
                    client(url2, "late").predict(*song("[verse] late"), api_name="/generate_song")
                assert "waited 1 s" in str(timed_out.value), timed_out.value
                asyncio.run(finish(app_url))
                audio, _ = after.result(30)
                assert Path(audio).suffix == ".wav"
                stats = asyncio.run(get_json(app_url + "/_app/stats"))
                assert stats["started"] == started and stats["active"] == 0
            finally:
                gk2.stop()
        finally:
            gk.stop()
            while _OPEN:
                _OPEN.pop().close()
    finally:
        app.stop()
