"""Job URLs of several boxes (issue #11 §2): a job id names its box; a box asked about
another box's job says so (421 misdirected), instead of a 404 that would claim the job
does not exist."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gatekeeper.app.process import Gatekeeper
from gatekeeper.config import load_config

TOKEN = "A" * 24


async def test_another_box_s_job_is_misdirected_not_missing(tmp_path: Path) -> None:
    """On box a: b.<token> -> 421 naming box b; a.<token> and a bare token that do not
    exist -> 404 not_found; the answers are JSON with a detail."""
    rules = (
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nbox_id: a\n"
        f"jobs: {{dir: {tmp_path}}}\nshutdown: {{linger: 0s}}\n"
        "upstream: {url: 'http://127.0.0.1:9'}\n"
    )
    gk = Gatekeeper(load_config(rules))
    await gk.start()
    try:
        (url,) = gk.proxy_urls
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/_gatekeeper/jobs/b.{TOKEN}/result") as r:
                body = await r.json()
                assert r.status == 421, body
                assert r.headers["X-Gatekeeper-Reason"] == "misdirected"
            assert body["reason"] == "misdirected" and body["box"] == "b"
            assert "belongs to box 'b', this is box 'a'" in body["detail"]
            for missing in (f"a.{TOKEN}", TOKEN):
                async with s.get(f"{url}/_gatekeeper/jobs/{missing}") as r:
                    assert r.status == 404
                    assert (await r.json())["reason"] == "not_found"
    finally:
        await gk.stop()
