"""The least a streaming aiohttp proxy can do: the floor gatekeeper's figures are read against.

One aiohttp server, one long-lived ``ClientSession`` (pool of 64, ``auto_decompress=False``),
the body relayed chunk by chunk, hop-by-hop headers dropped. No routing, admission,
metrics or logging: what is left of gatekeeper's cost once this is subtracted is its own.

    python bench/bare_proxy.py --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

# RFC 9110 §7.6.1, plus the framing headers aiohttp sets itself.
HOP_BY_HOP = frozenset(
    (
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "host",
    )
)  # fmt: skip
SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            upstream, connector=connector, auto_decompress=False
        ) as session:
            app[SESSION] = session
            yield

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = request.content if request.body_exists else None
        async with request.app[SESSION].request(
            request.method, request.rel_url, headers=headers, data=body, allow_redirects=False
        ) as upstream_resp:
            resp = web.StreamResponse(status=upstream_resp.status)
            for k, v in upstream_resp.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    resp.headers.add(k, v)
            if upstream_resp.content_length is not None:
                resp.content_length = upstream_resp.content_length
            await resp.prepare(request)
            async for chunk in upstream_resp.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    print(f"bare proxy listening on http://{host}:{port}", flush=True)
    web.run_app(make_app(args.upstream), host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
