"""The status document stays cheap with a big queue (issue #18 §6).

It lists every running job and the first ``STATUS_ENTRIES`` waiting ones in the
order they will start, with the totals (``waiting``, ``running``, ``listed``);
``?limit=N`` lists N, ``?limit=all`` every one, anything else is a JSON 400. The
same holds on the admin ``/status``, the public status path and in
``gatekeeper status`` (which says how many more wait).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from gatekeeper.app.process import Gatekeeper
from gatekeeper.cli.status_view import status_report
from gatekeeper.config import load_config
from gatekeeper.observability.status import STATUS_ENTRIES

WAITING = STATUS_ENTRIES + 30


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with s.get(url) as r:
        assert r.content_type == "application/json", await r.text()
        return r.status, await r.json()


async def test_the_status_document_lists_the_first_waiting_jobs_and_the_totals(
    tmp_path: Path,
) -> None:
    """130 jobs wait (the engine was never seen up): /status lists the first 100 with
    positions 1..100 and says 130 wait; limit=5 lists 5, limit=all 130; a bad limit is
    a 400 with a detail; the CLI view says how many more wait."""
    rules = (
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
        f"jobs: {{dir: {tmp_path}}}\nshutdown: {{linger: 0s}}\n"
        "upstream: {url: 'http://127.0.0.1:9'}\n"
        "admission: {queue: {max_waiting: 1000, per_client: 1000}}\n"
        "routes: [{name: gen, match: {path: /gen}, action: queue}]\n"
    )
    gk = Gatekeeper(load_config(rules))
    await gk.start()
    try:
        (url,) = gk.proxy_urls
        (admin,) = gk.admin_urls
        async with aiohttp.ClientSession() as s:
            for i in range(WAITING):
                async with s.get(f"{url}/gen?n={i}", headers={"Prefer": "respond-async"}) as r:
                    assert r.status == 202, await r.text()
            status, doc = await _get(s, f"{admin}/status")
            assert status == 200
            q = doc["queue"]
            assert (q["waiting"], q["running"], q["listed"]) == (WAITING, 0, STATUS_ENTRIES)
            assert q["limit"] == STATUS_ENTRIES
            assert [e["position"] for e in q["entries"]] == list(range(1, STATUS_ENTRIES + 1))
            text = "\n".join(status_report(doc))
            assert f"... and {WAITING - STATUS_ENTRIES} more waiting" in text
            public = f"{url}/_gatekeeper/status"
            for query, listed in (("limit=5", 5), ("limit=0", 0), ("limit=all", WAITING)):
                for base in (f"{admin}/status", public):
                    status, doc = await _get(s, f"{base}?{query}")
                    assert status == 200, doc
                    assert (doc["queue"]["listed"], len(doc["queue"]["entries"])) == (
                        listed,
                        listed,
                    )
            assert "more waiting" not in "\n".join(status_report(doc))
            for base in (f"{admin}/status", public):
                status, doc = await _get(s, f"{base}?limit=-1")
                assert (status, doc["reason"]) == (400, "bad_request"), doc
                assert "limit must be" in doc["detail"]
    finally:
        await gk.stop()
