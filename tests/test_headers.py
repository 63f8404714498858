"""Table tests of header rewriting (RFC 9110 §7.6.1 hop-by-hop removal, X-Forwarded-*)."""

from __future__ import annotations

from multidict import CIMultiDict

from gatekeeper.core.headers import downstream_response_headers, upstream_request_headers


def test_hop_by_hop_removed_end_to_end_kept() -> None:
    """Connection, the fields it names and the fixed hop-by-hop set go; the rest stays."""
    h = CIMultiDict(
        [
            ("Connection", "X-Hop, keep-alive"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Authorization", "Basic abc"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Content-Type", "audio/wav"),
            ("Content-Length", "10"),
        ]
    )
    out = downstream_response_headers(h)
    assert list(out.items()) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Type", "audio/wav"),
        ("Content-Length", "10"),
    ]


def test_an_engine_cannot_send_gatekeepers_reason_header() -> None:
    """The engine's X-Gatekeeper-Reason (any case) is dropped, the rest kept in order: a
    503 with that header is always gatekeeper's own refusal, safe for HAProxy to retry."""
    h = CIMultiDict(
        [("Retry-After", "5"), ("x-gatekeeper-reason", "busy"), ("Content-Type", "text/plain")]
    )
    out = downstream_response_headers(h)
    assert list(out.items()) == [("Retry-After", "5"), ("Content-Type", "text/plain")]


def test_forwarded_headers() -> None:
    """Host is kept; X-Forwarded-For is appended to; -Proto and -Host are set; id forwarded."""
    h = CIMultiDict(
        [("Host", "music.example"), ("X-Forwarded-For", "10.0.0.1"), ("Connection", "close")]
    )
    out = upstream_request_headers(h, client_ip="127.0.0.1", scheme="http", request_id="r1")
    assert out["Host"] == "music.example"
    assert out["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "music.example"
    assert out["X-Request-ID"] == "r1"
    assert "Connection" not in out


def test_forwarded_for_started_when_absent() -> None:
    """Without a prior X-Forwarded-For the client address starts the list."""
    out = upstream_request_headers(CIMultiDict(), client_ip="::1", scheme="https", request_id="x")
    assert out["X-Forwarded-For"] == "::1"
    assert out["X-Forwarded-Proto"] == "https"
    assert "X-Forwarded-Host" not in out
