"""What a job is named by and what its request asks for (issue #9). PURE: no I/O.

- **Job ids** are the only capability to read a result: 144 random bits,
  URL-safe base64 (``new_job_id``), after ``<box_id>.`` when the rules name the
  box (issue #11 §2: HAProxy routes ``<jobs_path>/<box>.…`` back to the box that
  holds the job). ``is_job_id`` checks the exact shape, so anything else is a 404
  without a lookup.
- **Coalescing keys** (``coalesce_key``): two requests that would be the same
  request to the engine *for the same identity* get the same key (issue #18 §3):
  the client key (unless ``jobs.coalesce_across_clients``) and the values of the
  ``jobs.coalesce_vary`` headers (``vary_headers``) always count; with an
  ``Idempotency-Key`` that key (plus the route) decides the rest; otherwise
  method, the path as forwarded, raw query and the SHA-256 of the body bytes as
  forwarded do.
- **Request headers** a job depends on, parsed strictly (a malformed one is a
  400 ``BadHeader``, never a guess): ``Prefer: respond-async`` (RFC 7240) and
  ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence

__all__ = [
    "BOX_SEPARATOR",
    "JOB_ID_BYTES",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_PREFER_BYTES",
    "BadHeader",
    "check_idempotency_key",
    "client_hash",
    "coalesce_key",
    "id_prefix",
    "is_job_id",
    "new_job_id",
    "routed_elsewhere",
    "vary_headers",
    "vary_values",
    "wants_async",
]

JOB_ID_BYTES = 18  # 144 bits (issue #9 asks for >= 128)
# token_urlsafe(18): 4 * 18 / 3 chars, no padding; the box prefix is config.check_box_id's
# shape. '.' never occurs in either part, so HAProxy splits on the first one.
_JOB_ID = re.compile(r"(?:[a-z0-9][a-z0-9-]{0,31}\.)?[A-Za-z0-9_-]{24}")
BOX_SEPARATOR = "."
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

MAX_PREFER_BYTES = 1024
MAX_IDEMPOTENCY_KEY = 255


def new_job_id(box_id: str | None = None) -> str:
    """A fresh, unguessable job id: 24 characters of [A-Za-z0-9_-], after ``<box_id>.``
    when given (the box prefix names where the job lives; it adds no secrecy)."""
    token = secrets.token_urlsafe(JOB_ID_BYTES)
    return token if box_id is None else f"{box_id}{BOX_SEPARATOR}{token}"


def id_prefix(box_id: str | None, store: str) -> str | None:
    """The prefix of new job ids: ``box_id`` with a store of one box (HAProxy routes a
    job URL to the box that holds it, issue #11 §2); none with a store every box shares
    (``postgres``, issue #21): any box answers for any job, so no routing is needed."""
    return None if store == "postgres" else box_id


def routed_elsewhere(job_id: str, box_id: str | None, store: str) -> str | None:
    """The box an unknown id names when it is not this one and job URLs are routed by
    box (a store of one box): the 421 of ``jobs.api``; None otherwise (a plain 404)."""
    owner, sep, _ = job_id.rpartition(BOX_SEPARATOR)
    if not sep or owner == box_id or store == "postgres":
        return None
    return owner


def is_job_id(s: str) -> bool:
    """True if ``s`` has exactly a shape ``new_job_id`` makes (with or without a box)."""
    return isinstance(s, str) and _JOB_ID.fullmatch(s) is not None


def _field(s: str) -> str:
    r"""One component of a coalescing key, escaped so that the encoding is injective.

    A decoded path or query may contain NUL (``%00``): without the escape,
    path "a\0b" + query "c" would collide with path "a" + query "b\0c".
    """
    return s.replace("\\", "\\\\").replace("\0", "\\0")


def coalesce_key(
    route: str,
    method: str,
    path: str,
    query: str,
    body_sha256: str,
    idempotency_key: str | None,
    client: str = "",
    vary: Sequence[tuple[str, str]] = (),
) -> str:
    """Hex SHA-256 naming the generation a request asks for, for one identity.

    ``path`` is the path exactly as forwarded (not normalised: the engine may treat
    ``/generate/`` and ``/generate`` differently), ``query`` the raw query string,
    ``body_sha256`` the hex digest of the body bytes as forwarded. ``client`` is the
    client key (``""`` only when ``jobs.coalesce_across_clients`` says identities
    may share), ``vary`` the (lowercased name, value) pairs of the
    ``jobs.coalesce_vary`` headers (``vary_values``): two requests that differ in
    either are different requests to the engine (another ``Authorization``, another
    answer) and never share a job. With an ``Idempotency-Key`` it alone (within the
    route, the client key and ``vary``) decides: the client said "this is the same
    operation", whatever the body; always scoped to the client, so two users' weak
    keys (``1``) never share a result.
    """
    if _SHA256_HEX.fullmatch(body_sha256) is None:
        raise ValueError(f"body_sha256 must be 64 lowercase hex digits, not {body_sha256!r}")
    parts: tuple[str, ...]
    if idempotency_key is not None:
        parts = ("idem", route, client, idempotency_key)
    else:
        parts = ("req", route, method, path, query, body_sha256, client)
    for name, value in vary:
        parts += (f"{name.lower()}:{value}",)
    canonical = "\0".join(_field(p) for p in parts)
    return hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()


# The default of ``jobs.coalesce_vary`` (null): who the engine may answer differently.
DEFAULT_VARY = ("Authorization", "Cookie")


def vary_headers(
    configured: Sequence[str] | None, client_key_header: str | None
) -> tuple[str, ...]:
    """The header names whose values are part of a coalescing key: ``jobs.coalesce_vary``
    as configured, or by default (None) ``Authorization``, ``Cookie`` and the client-key
    header when ``client_key`` is ``header:<Name>``."""
    if configured is not None:
        return tuple(configured)
    return DEFAULT_VARY + ((client_key_header,) if client_key_header else ())


def vary_values(
    names: Sequence[str], getall: Callable[[str], Sequence[str]]
) -> tuple[tuple[str, str], ...]:
    """(lowercased name, value) of every value of every header in ``names``, in order;
    an absent header counts too (its name with no value), so absent != empty."""
    out: list[tuple[str, str]] = []
    for name in names:
        values = getall(name)
        out.append((name.lower(), str(len(values))))
        out.extend((name.lower(), v) for v in values)
    return tuple(out)


# Keyed per process: an 8-hex-digit plain hash of an IPv4 address could be reversed by
# trying all 2^32; with a secret key it only says "the same client" within one run.
_CLIENT_HASH_KEY = secrets.token_bytes(16)


def client_hash(client: str) -> str:
    """8 hex chars of a keyed BLAKE2b of the client key: how /status shows a client
    (stable within one process, meaningless outside it)."""
    data = client.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, key=_CLIENT_HASH_KEY, digest_size=4).hexdigest()


class BadHeader(ValueError):
    """A request header a job depends on is malformed (-> 400 with ``detail``)."""

    def __init__(self, header: str, detail: str) -> None:
        super().__init__(f"{header}: {detail}")
        self.header = header
        self.detail = detail


# RFC 9110 §5.6.2: tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.6.4: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE, obs-text
# being any character >= 0x80 once decoded.
_QUOTED = re.compile(r'"(?:[\t !#-\[\]-~\x80-\U0010ffff]|\\[\t -~\x80-\U0010ffff])*"')
# Control characters other than HTAB (RFC 9110 §5.5: never valid in a field value).
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_OWS = " \t"


def _short(s: str) -> str:
    return repr(s if len(s) <= 32 else s[:29] + "...")


def _split(value: str, sep: str, header: str) -> list[str]:
    """Split at ``sep`` outside quoted strings; unbalanced quotes are an error."""
    parts: list[str] = []
    start = 0
    quoted = False
    i = 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1  # quoted-pair: the next character is literal
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == sep:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise BadHeader(header, "unbalanced quotes")
    parts.append(value[start:])
    return parts


def _name_value(part: str, header: str) -> tuple[str, str | None]:
    """``token [ BWS "=" BWS word ]`` -> (lowercased token, word or None)."""
    name, eq, value = part.partition("=")
    name = name.strip(_OWS)
    if _TOKEN.fullmatch(name) is None:
        what = "empty preference" if not name else f"invalid token {_short(name)}"
        raise BadHeader(header, what)
    if not eq:
        return name.lower(), None
    value = value.strip(_OWS)
    if _TOKEN.fullmatch(value) is None and _QUOTED.fullmatch(value) is None:
        raise BadHeader(header, f"invalid value {_short(value)} of {name!r}")
    return name.lower(), value


def wants_async(prefer_values: Sequence[str]) -> bool:
    """True if the ``Prefer`` header fields ask for ``respond-async`` (RFC 7240 §4.1).

    Grammar (RFC 7240 §2): ``1#( token [ BWS "=" BWS word ] *( OWS ";" [ OWS
    parameter ] ) )``; tokens are case-insensitive; unknown preferences (and
    ``wait``) are ignored, as are empty list elements (RFC 9110 §5.6.1).
    ``respond-async`` takes no value: ``respond-async=x`` is an error rather
    than a guess either way.
    """
    header = "Prefer"
    size = sum(len(v.encode("utf-8", "surrogateescape")) for v in prefer_values)
    size += 2 * max(0, len(prefer_values) - 1)  # as one field: values joined by ", "
    if size > MAX_PREFER_BYTES:
        raise BadHeader(header, f"longer than {MAX_PREFER_BYTES} bytes")
    found = False
    for value in prefer_values:
        if _CTL.search(value):
            raise BadHeader(header, "control character")
        for element in _split(value, ",", header):
            if not element.strip(_OWS):
                continue
            first, *params = _split(element, ";", header)
            name, word = _name_value(first, header)
            for param in params:
                if param.strip(_OWS):
                    _name_value(param, header)
            if name == "respond-async":
                if word is not None:
                    raise BadHeader(header, "respond-async takes no value")
                found = True
    return found


_SF_STRING = re.compile(r'"((?:[ !#-\[\]-~]|\\["\\])*)"')  # RFC 8941 §3.3.3
_VISIBLE = re.compile(r"[!-~]+")


def check_idempotency_key(values: Sequence[str]) -> str | None:
    """The ``Idempotency-Key`` of a request, None if absent.

    One field of visible ASCII, or an RFC 8941 sf-string (``"..."``, the
    draft's form) whose quotes are stripped and escapes undone; at most
    ``MAX_IDEMPOTENCY_KEY`` characters. Repeated, empty, too long or anything
    else is a ``BadHeader``: a key that is silently misread would coalesce
    requests the client meant to be different.
    """
    header = "Idempotency-Key"
    if not values:
        return None
    if len(values) > 1:
        raise BadHeader(header, "repeated")
    raw = values[0].strip(_OWS)
    if raw.startswith('"'):
        m = _SF_STRING.fullmatch(raw)
        if m is None:
            raise BadHeader(header, "invalid quoted string")
        key = re.sub(r"\\(.)", r"\1", m.group(1))
    else:
        if raw and _VISIBLE.fullmatch(raw) is None:
            raise BadHeader(header, "not visible ASCII")
        key = raw
    if not key:
        raise BadHeader(header, "empty")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise BadHeader(header, f"longer than {MAX_IDEMPOTENCY_KEY} characters")
    return key
