"""Plain HTTP through the real agent and server processes, with curl and httpx."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

from tests.support.curl import curl
from tests.support.origins import (
    GZIP_BODY,
    http_origin,
    pattern_bytes,
    pattern_sha256,
)

from .helpers import Tunnel, client, url


async def test_get_strips_hop_by_hop_headers_and_adds_via(tunnel: Tunnel) -> None:
    async with http_origin() as origin:
        code, out, err = await curl(
            "-x", tunnel.proxy,
            "-H", "Connection: keep-alive, X-Hop",
            "-H", "X-Hop: secret",
            "-H", "Keep-Alive: timeout=5",
            "-H", "Proxy-Connection: keep-alive",
            "-H", "TE: trailers",
            "-H", "X-Dup: 1", "-H", "X-Dup: 2",
            url(origin, "/echo?q=1"),
        )  # fmt: skip
    assert code == 0, err
    seen = json.loads(out)
    names = [n.lower() for n, _ in seen["headers"]]
    assert seen["method"] == "GET"
    assert seen["target"] == "/echo?q=1", "the origin must get origin-form"
    for gone in ("connection", "x-hop", "keep-alive", "proxy-connection", "te"):
        assert gone not in names
    assert ["via", "1.1 fluidity"] in [[n.lower(), v] for n, v in seen["headers"]]
    assert [v for n, v in seen["headers"] if n.lower() == "x-dup"] == ["1", "2"]
    # Nothing of httpx's own: only what curl sent (plus Via) reaches the origin.
    assert "accept-encoding" not in names
    assert next(v for n, v in seen["headers"] if n.lower() == "user-agent").startswith("curl/")


async def test_post_head_and_keepalive_with_httpx(tunnel: Tunnel) -> None:
    body = pattern_bytes(300_000)
    async with http_origin() as origin, client(tunnel) as http:
        posted = await http.post(url(origin, "/upload"), content=body)
        head = await http.head(url(origin, "/stream?n=5000"))
        again = await http.get(url(origin, "/echo"))
    assert posted.status_code == 200
    assert posted.json()["received"] == len(body)
    assert posted.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert posted.json()["framing"] == "content-length"
    assert head.status_code == 200
    assert head.headers["content-length"] == "5000"
    assert head.content == b""
    assert again.json()["method"] == "GET"
    assert origin.connections >= 1


async def test_chunked_upload_is_streamed(tunnel: Tunnel) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 16_384

    async with http_origin() as origin, client(tunnel) as http:
        response = await http.post(url(origin, "/upload"), content=chunks())
    assert response.json()["received"] == 64 * 16_384
    assert response.json()["framing"] == "chunked"


async def test_100_megabyte_download_arrives_intact(tunnel: Tunnel) -> None:
    size = 100 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    async with (
        http_origin() as origin,
        client(tunnel) as http,
        http.stream("GET", url(origin, f"/stream?n={size}")) as response,
    ):
        assert response.status_code == 200
        async for piece in response.aiter_raw():
            digest.update(piece)
            received += len(piece)
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)


async def test_expect_100_continue(tunnel: Tunnel) -> None:
    async with http_origin() as origin:
        body_file = tunnel.workdir / "body.bin"
        body_file.write_bytes(pattern_bytes(2_000_000))
        code, out, err = await curl(
            "-v", "-x", tunnel.proxy, "-H", "Expect: 100-continue",
            "--data-binary", f"@{body_file}", url(origin, "/upload"),
        )  # fmt: skip
    assert code == 0, err
    assert "HTTP/1.1 100 Continue" in err
    assert json.loads(out)["received"] == 2_000_000
    assert all(n.lower() != b"expect" for r in origin.requests for n, _ in r.headers)


async def test_redirect_is_passed_through_and_gzip_untouched(tunnel: Tunnel) -> None:
    async with http_origin() as origin, client(tunnel) as http:
        redirect = await http.get(url(origin, "/redirect"))
        async with http.stream("GET", url(origin, "/gzip")) as gz:
            raw = b"".join([piece async for piece in gz.aiter_raw()])
            encoding = gz.headers["content-encoding"]
        cookie = await http.get(url(origin, "/set-cookie"))
        async with client(tunnel) as fresh:  # an empty cookie jar of its own
            echo = await fresh.get(url(origin, "/echo"))
    assert redirect.status_code == 302
    assert redirect.headers["location"].endswith("/echo?from=redirect")
    assert [r.target for r in origin.requests].count(b"/echo?from=redirect") == 0
    assert encoding == "gzip"
    assert raw == GZIP_BODY
    assert cookie.headers["set-cookie"].startswith("fluidity_test=1")
    # The server's shared upstream client must not remember cookies between requests.
    assert "cookie" not in [n.lower() for n, _ in echo.json()["headers"]]
