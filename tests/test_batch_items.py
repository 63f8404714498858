"""Table tests of the pure pieces of batch routes (issue #20 §3): JSON pointers, cutting a
batch body into items, the ``batch:`` keys at config load, the open-items book."""

from __future__ import annotations

import json
import math

import pytest

from gatekeeper.config import ConfigError, load_config
from gatekeeper.config.batch import BatchSpec
from gatekeeper.jobs.batch import pointer
from gatekeeper.jobs.batch.book import OpenItems
from gatekeeper.jobs.batch.items import BatchProblem, cut
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.waitroom import QueueLimits

DOC = {"items": [{"a/b": 1, "m~n": 2}, [10, 20]], "": {"x": 0}, "s": "t"}


@pytest.mark.parametrize(
    ("ptr", "value"),
    [
        ("", DOC),
        ("/items/0/a~1b", 1),
        ("/items/0/m~0n", 2),
        ("/items/1/1", 20),
        ("/", {"x": 0}),
        ("//x", 0),
        ("/s", "t"),
    ],
)
def test_a_pointer_resolves_as_rfc_6901_says(ptr: str, value: object) -> None:
    """RFC 6901 §4: ~1 is '/', ~0 is '~', '' is the whole document, '/' the member ''."""
    assert pointer.resolve(DOC, ptr) == value


@pytest.mark.parametrize(
    ("ptr", "at", "why"),
    [
        ("/nope", "", "no member 'nope' at the root"),
        ("/items/2", "/items", "'2' is not an index of the 2-item list at /items"),
        ("/items/01", "/items", "'01' is not an index"),
        ("/items/-", "/items", "'-' is not an index"),
        ("/s/x", "/s", "/s is a string, not an object or a list"),
    ],
)
def test_a_missing_pointer_says_where_the_walk_stopped(ptr: str, at: str, why: str) -> None:
    """Missing carries the longest prefix that exists and why the next token failed."""
    with pytest.raises(pointer.Missing) as exc:
        pointer.resolve(DOC, ptr)
    assert exc.value.at == at and exc.value.why.startswith(why)


@pytest.mark.parametrize("bad", ["items", "/a~2", "/a~"])
def test_a_malformed_pointer_is_a_value_error(bad: str) -> None:
    """Not '' and not '/'-led, or a '~' not followed by 0 or 1."""
    with pytest.raises(ValueError):
        pointer.parse(bad)


def test_join_escapes_a_token() -> None:
    """The pointer of a child escapes '~' and '/' (what errors name)."""
    assert pointer.join("/items", 3) == "/items/3"
    assert pointer.join("", "a/b~c") == "/a~1b~0c"


SPEC = BatchSpec(items="/items", each="/generate", shared=("/description",), max_items=3)
SONG = {"lyrics": "la"}


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_cut_makes_one_body_per_item_with_the_shared_fields() -> None:
    """Each item becomes its own JSON body; a shared field is copied in unless the item
    has its own; a shared field the body leaves out is not copied."""
    doc = {"items": [SONG, {"lyrics": "b", "description": "own"}], "description": "pop"}
    got = [json.loads(b) for b in cut(body(doc), SPEC, 1000)]
    assert got == [{"description": "pop", "lyrics": "la"}, {"lyrics": "b", "description": "own"}]
    assert [json.loads(b) for b in cut(body({"items": [SONG]}), SPEC, 1000)] == [SONG]
    whole = BatchSpec(items="", each="/generate")
    assert [json.loads(b) for b in cut(body([SONG, SONG]), whole, 1000)] == [SONG, SONG]


@pytest.mark.parametrize(
    ("raw", "status", "reason", "at", "says"),
    [
        (b"{not json", 400, "bad_batch", "", "not JSON"),
        (b"\xff\xfe", 400, "bad_batch", "", "not UTF-8"),
        (body({"songs": [SONG]}), 400, "bad_batch", "/items", "no member 'items'"),
        (body([SONG]), 400, "bad_batch", "/items", "'items' is not an index"),
        (body({"items": {"0": SONG}}), 400, "bad_batch", "/items", "got object"),
        (body({"items": []}), 400, "bad_batch", "/items", "empty"),
        (body({"items": [SONG] * 4}), 413, "too_many_items", "/items", "at most 3"),
        (body({"items": [SONG, "song"]}), 400, "bad_batch", "/items/1", "got string"),
        (body({"items": [SONG, {"lyrics": "x" * 100}]}), 413, "body_too_large", "/items/1", "(50)"),
    ],
)
def test_a_bad_batch_body_names_the_pointer_that_failed(
    raw: bytes, status: int, reason: str, at: str, says: str
) -> None:
    """Not JSON, pointer missing, not a list, empty, too many items, an item that is not
    an object or is over limits.max_body_bytes: 400/413 with the failing JSON pointer."""
    with pytest.raises(BatchProblem) as exc:
        cut(raw, SPEC, 50)
    p = exc.value
    assert (p.status, p.reason, p.pointer) == (status, reason, at)
    assert says in p.detail


QUEUE = "  - {name: generate, match: {methods: [POST], path: /generate/**}, action: queue}\n"


def batch_rules(batch: str, *, extra: str = "", action: str = "batch") -> str:
    return (
        f"{extra}routes:\n{QUEUE}"
        f"  - name: b\n    match: {{methods: [POST], path: /batch-generate/**}}\n"
        f"    action: {action}\n    batch: {batch}\n"
    )


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        (batch_rules("{items: items, each: /generate}"), "routes[1].batch.items", "RFC 6901"),
        (batch_rules("{items: /a~2, each: /generate}"), "routes[1].batch.items", "RFC 6901"),
        (batch_rules("{each: /generate, shared: [x]}"), "routes[1].batch.shared", "'x'"),
        (batch_rules("{items: /items}"), "routes[1].batch.each", "is required"),
        (batch_rules("{each: /generate/*}"), "routes[1].batch.each", "plain path"),
        (batch_rules("{each: /other}"), "routes[1].batch.each", "matches no route"),
        (batch_rules("{each: /batch-generate}"), "routes[1].batch.each", "action batch"),
        (batch_rules("{each: /generate, max_items: 0}"), "routes[1].batch.max_items", ">= 1"),
        (batch_rules("{each: /generate}", action="queue"), "routes[1].batch", "only applies"),
        (
            batch_rules("{each: /generate}", extra="jobs_path: null\n"),
            "routes[1].action",
            "needs jobs_path",
        ),
        (
            f"routes:\n{QUEUE}  - {{name: b, match: {{path: /b}}, action: batch}}\n",
            "routes[1].batch",
            "is required",
        ),
    ],
)
def test_batch_keys_are_checked_at_load(text: str, where: str, says: str) -> None:
    """Every bad batch key is a ConfigError naming its YAML path, line and value; each
    must be the path of a queue route (an item waits its turn, never passes)."""
    with pytest.raises(ConfigError) as exc:
        load_config(text)
    mine = [p for p in exc.value.problems if p.path == where]
    assert mine and says in mine[0].message and mine[0].line is not None, exc.value


def test_a_batch_route_loads_with_its_defaults() -> None:
    """A valid batch route: its keys, the defaults for the rest, a one-line summary."""
    route = load_config(batch_rules("{each: /generate, shared: [/description]}")).routes[1]
    assert route.batch == BatchSpec(items="/items", each="/generate", shared=("/description",))
    assert (
        route.summary() == "b: POST /batch-generate/** batch (items /items -> POST /generate"
        " each, at most 20)"
    )


def record(client: str, batch: str | None) -> JobRecord:
    return JobRecord("j", "generate", client, False, "POST", "/generate", (), None, 0, batch=batch)


def test_open_batch_items_have_their_own_cap_and_never_fill_the_queue() -> None:
    """A's open batch items are left out of A's per_client count and of max_waiting (B
    is never turned away by A's batch), and wait without a deadline; a lone job keeps
    its max_wait."""
    book = OpenItems()
    limits = QueueLimits(max_waiting=2, max_wait=60.0, per_client=2)
    assert book.entered(record("A", None), 10.0, 60.0) == 70.0
    for _ in range(5):
        assert book.entered(record("A", "batch1"), 10.0, 60.0) == math.inf
    assert book.of("A") == 5
    running = [record("A", "batch1")]  # one of them runs
    assert book.exempt("A", 1, limits, running) == (-4, QueueLimits(6, 60.0, 2))
    assert book.exempt("B", 0, limits, running) == (0, QueueLimits(6, 60.0, 2))
    for _ in range(5):
        book.left(record("A", "batch1"))
    book.left(record("A", "batch1"))  # never below zero
    assert book.of("A") == 0 and book.exempt("B", 0, limits, []) == (0, limits)


def conforms(body: object, name: str) -> None:
    """``body`` is valid against the batch fragment's schema ``name`` (JSON Schema 2020-12)."""
    import jsonschema

    from gatekeeper.jobs.batch.openapi import SCHEMAS

    doc = {"components": {"schemas": SCHEMAS}, "$ref": f"#/components/schemas/{name}"}
    jsonschema.Draft202012Validator(doc).validate(body)


def test_the_openapi_fragment_is_a_valid_openapi_3_1_document() -> None:
    """openapi_fragment() merged into a bare OpenAPI 3.1 document validates."""
    validator = pytest.importorskip("openapi_spec_validator")
    from gatekeeper.jobs.batch.openapi import openapi_fragment

    fragment = openapi_fragment()
    doc = {"openapi": "3.1.0", "info": {"title": "gatekeeper", "version": "1"}, **fragment}
    validator.validate(doc)
    assert "/_gatekeeper/jobs/batches/{batch_id}" in doc["paths"]
    assert "/batch-generate" in doc["paths"]


def test_a_problem_answer_conforms_to_the_fragment() -> None:
    """The 400/413 body of a refused batch is what the fragment's BatchProblem says."""
    with pytest.raises(BatchProblem) as exc:
        cut(b"[]", SPEC, 50)
    p = exc.value
    conforms({"detail": p.detail, "reason": p.reason, "pointer": p.pointer}, "BatchProblem")
