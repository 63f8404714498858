"""gatekeeper's OpenAPI document (issue #20 §4): valid, built from code, and true to the docs.

The document validates with ``openapi-spec-validator`` (OpenAPI 3.1) for the
shipped rules and for others (another ``jobs_path``, more queue routes, a
fragment provider added); fragments that disagree are refused; the served
document is the built one. Every JSON example in README.md and docs/*.md that
claims to be a gatekeeper answer is fenced ```` ```json openapi:<Schema> ````
and validates against that schema; an untagged example that looks like one
(``detail`` + ``reason``, or a job, or a list of jobs) fails, so none slips by.
The real answers of the real process are checked in tests/test_openapi_e2e.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from openapi_support import Contract

from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.jobs import openapi
from gatekeeper.proxy.responses import json_body

ClientFactory = Callable[..., Awaitable[TestClient]]
ROOT = Path(__file__).resolve().parent.parent
# A fenced block, indented or not: (indent, info string, body).
FENCE = re.compile(r"^([ \t]*)```([^\n`]*)\n(.*?)^\1```", re.M | re.S)
TAG = re.compile(r"\bopenapi:([A-Za-z0-9_]+)\b")


def _batch_like(cfg: object) -> dict[str, Any]:
    """A provider as another feature writes one (a path under the default jobs path, a
    schema, a webhook)."""
    return {
        "components": {"schemas": {"Thing": {"type": "object"}}},
        "paths": {
            "/_gatekeeper/jobs/things/{id}": {
                "get": {
                    "operationId": "getThing",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "a thing",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Thing"}
                                }
                            },
                        }
                    },
                }
            }
        },
        "webhooks": {
            "thing.done": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Job"}}
                        }
                    },
                    "responses": {"200": {"description": "received"}},
                }
            }
        },
    }


RULES = [
    "",
    "jobs_path: /api/jobs\n",
    yaml.safe_dump(
        {
            "routes": [
                {
                    "name": "song",
                    "match": {"methods": ["POST", "PUT"], "path": "/song/**"},
                    "action": "queue",
                },
                {"name": "globbed", "match": {"path": "/x/*/y"}, "action": "queue"},
            ]
        }
    ),
]


@pytest.mark.parametrize("rules", RULES, ids=["shipped", "jobs_path", "routes"])
def test_the_document_is_valid_openapi_3_1(rules: str) -> None:
    """The document built for these rules validates (openapi-spec-validator, 3.1)."""
    cfg = load_config(rules)
    doc = openapi.build(cfg)
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    jobs_path = cfg.jobs_path
    assert jobs_path is not None
    for suffix in ("", "/openapi.json", "/{id}", "/{id}/events", "/{id}/result"):
        assert jobs_path + suffix in doc["paths"]
    assert not any(p.startswith("/_gatekeeper/jobs") for p in doc["paths"]) or (
        jobs_path == "/_gatekeeper/jobs"
    )
    queue = [r for r in cfg.routes if r.action == "queue" and "*" not in r.path.rstrip("*")]
    for route in queue:
        ops = doc["paths"][route.path.removesuffix("/**")]
        assert all(ops[m.lower()]["responses"]["202"] for m in route.methods or {"POST"})


def test_a_provider_is_one_more_entry_and_lands_under_jobs_path() -> None:
    """A fragment provider added to the tuple merges its schemas, paths (moved under the
    configured jobs_path) and webhooks; the document stays valid."""
    cfg = load_config("jobs_path: /api/jobs\n")
    doc = openapi.build(cfg, (*openapi.PROVIDERS, _batch_like))
    validate(doc)
    assert "/api/jobs/things/{id}" in doc["paths"] and "Thing" in doc["components"]["schemas"]
    assert "thing.done" in doc["webhooks"]
    assert "Job" in doc["components"]["schemas"]  # the jobs fragment is still there


def test_fragments_that_disagree_are_refused() -> None:
    """Two providers that define one name differently: ValueError naming the place; the
    same definition twice is fine."""
    clash = {"components": {"schemas": {"Job": {"type": "string"}}}}
    with pytest.raises(ValueError, match="/components/schemas/Job"):
        openapi.build(load_config(""), (*openapi.PROVIDERS, lambda cfg: clash))
    same = openapi.jobs_fragment
    openapi.build(load_config(""), (*openapi.PROVIDERS, same))


def test_the_error_body_gatekeeper_writes_is_the_document_s_error() -> None:
    """proxy.responses.json_body, with and without retry_after, is an Error."""
    contract = Contract(openapi.build(load_config("")))
    contract.validate("Error", json.loads(json_body("busy now", "busy", 30)))
    contract.validate("Error", json.loads(json_body("no such job", "not_found", None)))


async def test_the_served_document_is_the_built_one(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """GET <jobs_path>/openapi.json answers the document for the live rules (JSON), and
    POST there is 405."""
    cfg = load_config(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:1\njobs_path: /api/jobs\n"
        "upstream: {url: 'http://127.0.0.1:9'}\n"
    )
    st = await create_state(cfg, state_dir=tmp_path / "state")
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))
    async with client.get("/api/jobs/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        served = await r.json()
    assert served == json.loads(json.dumps(openapi.build(cfg)))
    validate(served)
    async with client.post("/api/jobs/openapi.json") as r:
        assert r.status == 405


def _examples() -> list[tuple[str, str, str | None, str]]:
    """(file, info string, tag, body) of every json fence in README.md and docs/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in FENCE.finditer(path.read_text("utf-8")):
            info = m.group(2).strip()
            if info.split(" ", 1)[0] != "json":
                continue
            tag = TAG.search(info)
            found.append((path.name, info, tag.group(1) if tag else None, m.group(3)))
    return found


def _looks_like_an_answer(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    keys = set(value)
    return {"detail", "reason"} <= keys or {"state", "links"} <= keys or {"jobs", "next"} <= keys


def test_every_gatekeeper_answer_in_the_docs_validates() -> None:
    """Each ```json openapi:<Schema> example validates against that schema; an untagged
    JSON example that looks like a gatekeeper answer fails (tag it)."""
    contract = Contract(openapi.build(load_config("")))
    examples = _examples()
    tagged = [e for e in examples if e[2] is not None]
    assert len(tagged) >= 5, "docs/jobs-api.md shows tagged answers"
    for name, info, tag, body in examples:
        if tag is None:
            try:
                value = json.loads(body)
            except json.JSONDecodeError:
                continue
            assert not _looks_like_an_answer(value), f"{name}: tag this example ({info!r})"
            continue
        assert tag in contract.doc["components"]["schemas"], f"{name}: no schema {tag}"
        contract.validate(tag, json.loads(body))
