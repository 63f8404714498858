"""Table tests of job ids, coalescing keys and the Prefer / Idempotency-Key parsers."""

from __future__ import annotations

import hashlib

import pytest

from gatekeeper.core.vocab import FINAL_STATES, JOB_STATES, QUEUE_REASONS, JobState, Outcome
from gatekeeper.jobs.ids import (
    MAX_IDEMPOTENCY_KEY,
    MAX_PREFER_BYTES,
    BadHeader,
    check_idempotency_key,
    client_hash,
    coalesce_key,
    is_job_id,
    new_job_id,
    vary_headers,
    vary_values,
    wants_async,
)

BODY = hashlib.sha256(b'{"prompt": "a song"}').hexdigest()
OTHER_BODY = hashlib.sha256(b'{"prompt": "another"}').hexdigest()


def test_vocab_job_states() -> None:
    """Job states and queue reasons are the wire values the jobs API and metrics use."""
    assert JOB_STATES == ("queued", "running", "done", "failed", "cancelled", "expired")
    assert {"done", "failed", "cancelled", "expired"} == FINAL_STATES
    assert JobState.QUEUED not in FINAL_STATES and JobState.RUNNING not in FINAL_STATES
    assert QUEUE_REASONS == (
        "queue_full",
        "queue_timeout",
        "client_limit",
        "storage_full",
        "storage_error",
    )
    assert (Outcome.QUEUED, Outcome.COALESCED) == ("queued", "coalesced")


def test_new_job_ids_are_well_formed_and_distinct() -> None:
    """new_job_id gives 24 URL-safe characters (144 bits), never the same twice in 10,000."""
    made = {new_job_id() for _ in range(10_000)}
    assert len(made) == 10_000
    assert all(is_job_id(i) and len(i) == 24 for i in made)


def test_job_ids_carry_the_box_id() -> None:
    """With a box id, new_job_id gives "<box_id>.<24-char token>", a valid job id whose
    box HAProxy can read back as the text before the '.'."""
    made = {new_job_id("gpu-1") for _ in range(1000)}
    assert len(made) == 1000
    for i in made:
        box, _, token = i.partition(".")
        assert (box, len(token)) == ("gpu-1", 24) and is_job_id(i)


@pytest.mark.parametrize(
    ("s", "ok"),
    [
        ("A" * 24, True),
        ("aZ09-_" * 4, True),
        ("A" * 23, False),
        ("A" * 25, False),
        ("", False),
        ("A" * 23 + "=", False),  # base64 padding is never produced
        ("A" * 23 + "+", False),  # nor the non-URL-safe alphabet
        ("A" * 23 + "/", False),
        ("A" * 24 + "\n", False),  # no trailing newline sneaking past an anchor
        ("A" * 23 + "é", False),
        ("A" * 23 + "٣", False),  # a Unicode digit is not [0-9]
        ("../../etc/passwd" + "A" * 8, False),
        ("box-a." + "A" * 24, True),  # a box id (issue #11 §2) before a '.'
        ("a." + "A" * 24, True),
        ("." + "A" * 24, False),
        ("Box." + "A" * 24, False),  # box ids are lower case
        ("-a." + "A" * 24, False),
        ("a.b." + "A" * 24, False),  # one '.', never two
        ("a.." + "A" * 24, False),
        ("a" * 33 + "." + "A" * 24, False),
        ("box-a." + "A" * 23, False),
    ],
)
def test_is_job_id(s: str, ok: bool) -> None:
    """Exactly 24 characters of [A-Za-z0-9_-], optionally after "<box_id>.": anything else
    is a 404 without a lookup."""
    assert is_job_id(s) is ok


BASE = ("generate", "POST", "/generate", "seed=1", BODY, None)


@pytest.mark.parametrize(
    ("changed", "same"),
    [
        ((), True),
        (("route", "other"), False),
        (("method", "PUT"), False),
        (("path", "/generate2"), False),
        (("query", "seed=2"), False),
        (("query", ""), False),
        (("body", OTHER_BODY), False),
    ],
)
def test_coalesce_key_components(changed: tuple[str, str], same: bool) -> None:
    """Without Idempotency-Key, route, method, path, query and body hash each decide."""
    names = ("route", "method", "path", "query", "body", "idem")
    args = dict(zip(names, BASE, strict=True))
    if changed:
        args[changed[0]] = changed[1]
    key = coalesce_key(*args.values())  # type: ignore[arg-type]
    assert (key == coalesce_key(*BASE)) is same
    assert len(key) == 64 and int(key, 16) >= 0


def test_idempotency_key_alone_decides() -> None:
    """With an Idempotency-Key, only it and the route matter; different keys never coalesce."""
    a = coalesce_key("generate", "POST", "/generate", "seed=1", BODY, "k-1")
    b = coalesce_key("generate", "PUT", "/other", "x=2", OTHER_BODY, "k-1")
    assert a == b
    assert a != coalesce_key("generate", "POST", "/generate", "seed=1", BODY, "k-2")
    assert a != coalesce_key("other", "POST", "/generate", "seed=1", BODY, "k-1")
    assert a != coalesce_key(*BASE)  # a key never equals the key-less form of the same request


def test_coalesce_key_is_the_documented_encoding() -> None:
    """The hash is over the NUL-joined canonical form the design fixes."""
    # The client key (issue #18 §3) ends the request form; "" only when identities share.
    want = hashlib.sha256(f"req\0generate\0POST\0/generate\0seed=1\0{BODY}\0".encode()).hexdigest()
    assert coalesce_key(*BASE) == want
    alice = coalesce_key(*BASE, client="ip:10.0.0.7", vary=(("authorization", "Bearer A"),))
    form = f"req\0generate\0POST\0/generate\0seed=1\0{BODY}\0ip:10.0.0.7\0authorization:Bearer A"
    assert alice == hashlib.sha256(form.encode()).hexdigest()
    idem = hashlib.sha256(b"idem\0generate\0ip:10.0.0.7\0k-1").hexdigest()
    key = coalesce_key("generate", "POST", "/generate", "", BODY, "k-1", client="ip:10.0.0.7")
    assert key == idem


def test_idempotency_key_is_scoped_to_the_client() -> None:
    """Two users sending the same weak key ("1") never share a job."""
    a = coalesce_key("generate", "POST", "/generate", "", BODY, "1", client="hdr:alice")
    b = coalesce_key("generate", "POST", "/generate", "", BODY, "1", client="hdr:bob")
    assert a != b
    # ... while the same user's key still decides alone, whatever the body.
    other = hashlib.sha256(b"other").hexdigest()
    assert a == coalesce_key("generate", "PUT", "/x", "q", other, "1", client="hdr:alice")


def test_a_shared_job_never_crosses_identities() -> None:
    """Issue #18 §3: the same request from another client key, or with another value of a
    coalesce_vary header (Authorization, Cookie, ...), is another job; the same identity's
    identical request still coalesces."""
    victim = coalesce_key(*BASE, client="ip:10.0.0.7", vary=(("authorization", "Bearer V"),))
    assert victim == coalesce_key(
        *BASE, client="ip:10.0.0.7", vary=(("authorization", "Bearer V"),)
    )
    assert victim != coalesce_key(
        *BASE, client="ip:10.0.0.8", vary=(("authorization", "Bearer V"),)
    )
    assert victim != coalesce_key(
        *BASE, client="ip:10.0.0.7", vary=(("authorization", "Bearer A"),)
    )
    assert victim != coalesce_key(*BASE, client="ip:10.0.0.7")
    # The same for an Idempotency-Key: the key decides only within one identity.
    idem = ("generate", "POST", "/generate", "", BODY, "k")
    a = coalesce_key(*idem, client="c", vary=(("authorization", "Bearer V"),))
    assert a != coalesce_key(*idem, client="c", vary=(("authorization", "Bearer A"),))


def test_vary_headers_default_and_values() -> None:
    """null: Authorization, Cookie and the client-key header; a list is used as given; an
    absent header differs from an empty one and repeated values all count."""
    assert vary_headers(None, None) == ("Authorization", "Cookie")
    assert vary_headers(None, "X-User-Id") == ("Authorization", "Cookie", "X-User-Id")
    assert vary_headers([], "X-User-Id") == ()
    assert vary_headers(["X-Tenant"], None) == ("X-Tenant",)
    headers = {"authorization": ["Bearer V"], "cookie": [""], "x-a": ["1", "2"]}

    def getall(name: str) -> list[str]:
        return headers.get(name.lower(), [])

    assert vary_values(["Authorization", "X-Missing"], getall) == (
        ("authorization", "1"),
        ("authorization", "Bearer V"),
        ("x-missing", "0"),
    )
    assert vary_values(["Cookie"], getall) != vary_values(["Cookie"], lambda name: [])
    assert vary_values(["X-A"], getall) == (("x-a", "2"), ("x-a", "1"), ("x-a", "2"))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("/a\0b", "c"), ("/a", "b\0c")),  # a NUL moved between components
        (("/a\\", "0b"), ("/a", "\\0b")),
        (("/a\\0", ""), ("/a\0", "")),  # an escaped NUL is not a NUL
    ],
)
def test_coalesce_key_is_injective(a: tuple[str, str], b: tuple[str, str]) -> None:
    """Decoded paths and queries may hold NUL or backslash: still no two requests share a key."""
    ka = coalesce_key("generate", "POST", a[0], a[1], BODY, None)
    kb = coalesce_key("generate", "POST", b[0], b[1], BODY, None)
    assert ka != kb


@pytest.mark.parametrize("bad", ["", "abc", BODY.upper(), BODY[:-1], BODY + "0"])
def test_coalesce_key_wants_a_hex_digest(bad: str) -> None:
    """body_sha256 must be a lowercase hex SHA-256 (a caller passing raw bytes is a bug)."""
    with pytest.raises(ValueError, match="body_sha256"):
        coalesce_key("generate", "POST", "/generate", "", bad, None)


def test_client_hash() -> None:
    """A client key is shown as 8 hex digits of a keyed hash: stable, never the key, and
    not the plain SHA-256 (which would let anyone try all 2^32 IPv4 addresses)."""
    assert client_hash("10.0.0.7") == client_hash("10.0.0.7")
    assert client_hash("10.0.0.7") != client_hash("10.0.0.8")
    assert client_hash("10.0.0.7") != hashlib.sha256(b"10.0.0.7").hexdigest()[:8]
    assert len(client_hash("")) == 8
    assert all(c in "0123456789abcdef" for c in client_hash("x"))


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([], False),
        ([""], False),
        (["respond-async"], True),
        (["Respond-Async"], True),  # tokens are case-insensitive
        (["RESPOND-ASYNC"], True),
        (["respond-async, wait=100"], True),
        (["wait=100, respond-async"], True),
        (["wait=100", "respond-async"], True),  # several fields
        (["wait=100"], False),
        (["handling=lenient"], False),
        (['return=minimal; foo="a,respond-async"'], False),  # inside quotes is a value
        (["respond-async; foo=bar"], True),  # parameters are allowed and ignored
        (["respond-async;"], True),  # an empty parameter is allowed by the grammar
        (['respond-async ; foo = "x;y"'], True),
        (["  respond-async  "], True),
        (["respond-async,,"], True),  # empty list elements are ignored (RFC 9110 §5.6.1)
        ([", respond-async"], True),
        (["\trespond-async"], True),
        (["respond-asyncx"], False),
        (['x="a\\"b", respond-async'], True),  # a quoted-pair escapes a quote
        (['x="caf\u00e9"'], False),  # obs-text inside quotes is allowed
        (["unknown-pref=abc; q=1"], False),
        (["a" * (MAX_PREFER_BYTES - 15) + ", respond-async"], True),  # exactly the limit
    ],
)
def test_wants_async_good(values: list[str], want: bool) -> None:
    """respond-async anywhere in any Prefer field means async; unknown preferences are ignored."""
    assert wants_async(values) is want


@pytest.mark.parametrize(
    ("values", "detail"),
    [
        (["a" * (MAX_PREFER_BYTES + 1)], "longer than 1024"),
        (["a" * 600, "b" * 423], "longer than 1024"),  # counted as one field: 600+2+423
        (["respond-async\x00"], "control character"),
        (["respond-async\r\nX-Evil: 1"], "control character"),
        (["respond-async\x7f"], "control character"),
        (["respond-async=1"], "takes no value"),
        (['respond-async=""'], "takes no value"),
        (["respond-async = yes"], "takes no value"),
        (["=1"], "empty preference"),
        (["respond-async, ;x"], "empty preference"),
        (["respond async"], "invalid token"),
        (["respønd-async"], "invalid token"),
        (["(respond-async)"], "invalid token"),
        (["respond-async; (x)=1"], "invalid token"),
        (['wait="10'], "unbalanced quotes"),
        (['respond-async, x="a\\"'], "unbalanced quotes"),
        (["wait="], "invalid value"),
        (['x=a"b"'], "invalid value"),
        (["x=a b"], "invalid value"),
        (['respond-async; x="a"b'], "invalid value"),
    ],
)
def test_wants_async_bad(values: list[str], detail: str) -> None:
    """A malformed or oversized Prefer is a 400 naming the header, never a guess."""
    with pytest.raises(BadHeader) as info:
        wants_async(values)
    assert info.value.header == "Prefer"
    assert detail in info.value.detail
    assert str(info.value).startswith("Prefer: ")


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([], None),
        (["abc-123"], "abc-123"),
        (["8e03978e-40d5-43e8-bc93-6894a57f9324"], "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (['"8e03978e-40d5"'], "8e03978e-40d5"),  # the draft's sf-string form: quotes stripped
        (['"a b"'], "a b"),  # sf-string allows spaces
        (['"a\\"b\\\\c"'], 'a"b\\c'),  # and its two escapes
        (["  key  "], "key"),
        (["!#$%&'()*+,-./:;<=>?@[]^_`{|}~"], "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"),
        (["k" * MAX_IDEMPOTENCY_KEY], "k" * MAX_IDEMPOTENCY_KEY),
        (['"' + "k" * MAX_IDEMPOTENCY_KEY + '"'], "k" * MAX_IDEMPOTENCY_KEY),
    ],
)
def test_idempotency_key_good(values: list[str], want: str | None) -> None:
    """A single field of visible ASCII, or a quoted sf-string, is the key."""
    assert check_idempotency_key(values) == want


@pytest.mark.parametrize(
    ("values", "detail"),
    [
        (["a", "b"], "repeated"),
        (["a", "a"], "repeated"),  # even the same value twice
        ([""], "empty"),
        (["   "], "empty"),
        (['""'], "empty"),
        (["k" * (MAX_IDEMPOTENCY_KEY + 1)], "longer than 255"),
        (['"' + "k" * (MAX_IDEMPOTENCY_KEY + 1) + '"'], "longer than 255"),
        (["a b"], "not visible ASCII"),
        (["a\tb"], "not visible ASCII"),
        (["a\x00b"], "not visible ASCII"),
        (["a\x7f"], "not visible ASCII"),
        (["clé"], "not visible ASCII"),
        (['"abc'], "invalid quoted string"),
        (['"a"b"'], "invalid quoted string"),
        (['"a\\nb"'], "invalid quoted string"),  # sf-string escapes only " and \
        (['"clé"'], "invalid quoted string"),
        (['"a\tb"'], "invalid quoted string"),
    ],
)
def test_idempotency_key_bad(values: list[str], detail: str) -> None:
    """Repeated, empty, too long or non-ASCII keys are a 400 naming the header."""
    with pytest.raises(BadHeader) as info:
        check_idempotency_key(values)
    assert info.value.header == "Idempotency-Key"
    assert detail in info.value.detail
