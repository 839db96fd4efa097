"""The origin pool (the server's HTTP/1.1 client) against real origins on loopback.

`origin` / `tls_origin` are the h11 test origins; `scripted_origin` runs a few lines per
connection for what a well-behaved origin never does (drop a request, answer early, lie about
keep-alive).
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from fluidity.server.egress import ConnectRefused, EgressDenied, EgressPolicy
from fluidity.server.origin_pool import (
    READ_SIZE,
    InvalidRequest,
    OriginError,
    OriginPool,
    OriginResponse,
    OriginTimeout,
    origin_ssl_context,
)
from fluidity.server.resolver import StaticResolver
from fluidity.server.upstream_http import parse_url
from tests.server.harness import LOOPBACK
from tests.support.origins import (
    HOST,
    HTTPOrigin,
    http_origin,
    pattern_bytes,
    pattern_chunks,
    pattern_sha256,
)
from tests.support.pki import TestTLS
from tests.support.scripted import OK, Peer, Script, answer_all, scripted_origin

MB = 1024 * 1024
Headers = list[tuple[bytes, bytes]]


@asynccontextmanager
async def pooled(
    policy: EgressPolicy = LOOPBACK,
    *,
    verify: ssl.SSLContext | None = None,
    read_timeout: float = 10.0,
    write_timeout: float = 10.0,
    **options: Any,
) -> AsyncIterator[OriginPool]:
    """An OriginPool (no TLS trust unless `verify` is given), closed when the block ends."""
    pool = OriginPool(
        policy,
        connect_timeout=5.0,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
        ssl_context=verify or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        **options,
    )
    try:
        yield pool
    finally:
        pool.close()


class Chunks:
    """A request body from pieces of bytes (a checkpoint before each, as a real source has)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)

    async def receive_some(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return next(self._pieces, b"")


@attrs.frozen
class Fetched:
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


async def send(
    pool: OriginPool,
    method: str,
    url: str,
    headers: Headers | None = None,
    body: Chunks | None = None,
) -> OriginResponse:
    """Start a request (Host first unless `headers` has one); the response is the caller's."""
    origin, target, authority = parse_url(url.encode())
    headers = list(headers or [])
    if not any(name.lower() == b"host" for name, _ in headers):
        headers.insert(0, (b"Host", authority))
    return await pool.request(method.encode(), origin, target, headers, body)


async def fetch(
    pool: OriginPool,
    method: str,
    url: str,
    headers: Headers | None = None,
    *,
    content: bytes | None = None,
    body: Chunks | None = None,
) -> Fetched:
    """A whole exchange; `content` is sent with its Content-Length."""
    if content is not None:
        headers = [*(headers or []), (b"Content-Length", b"%d" % len(content))]
        body = Chunks([content])
    with await send(pool, method, url, headers, body) as response:
        data = bytearray()
        while chunk := await response.receive_some():
            data += chunk
    return Fetched(response.status, response.reason, response.headers, bytes(data))


# -- keep-alive -----------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with pooled() as pool:
            for _ in range(3):
                response = await fetch(pool, "GET", origin.url("/echo"))
                assert response.status == 200
            assert pool.statistics().idle == 1
    assert origin.connections == 1


async def test_a_bodiless_get_is_one_write(
    origin: HTTPOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real_send_all = trio.SocketStream.send_all

    async def counting(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        if self.socket.getpeername()[1] == origin.port:  # the client's side only
            writes.append(len(data))
        await real_send_all(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting)
    with trio.fail_after(10):
        async with pooled() as pool:
            await fetch(pool, "GET", origin.url("/echo"))
            assert len(writes) == 1
            await fetch(pool, "POST", origin.url("/upload"), content=b"x" * 1000)  # head + body
    assert len(writes) == 2
    assert origin.connections == 1


async def test_the_request_goes_out_as_given(origin: HTTPOrigin) -> None:
    headers = [(b"Host", b"origin.test"), (b"X-Mixed-Case", b"One"), (b"accept", b"*/*")]
    with trio.fail_after(10):
        async with pooled() as pool:
            given = await fetch(pool, "GET", origin.url("/echo/a/../b?x=%41"), headers)
            with await send(pool, "GET", origin.url("/status/418")) as teapot:
                pass
    assert given.json()["target"] == "/echo/a/../b?x=%41"
    assert given.json()["headers"] == [[n.decode(), v.decode()] for n, v in headers]
    assert (teapot.status, teapot.reason, teapot.http_version) == (418, b"I'm a Teapot", b"1.1")


async def test_an_idle_connection_the_origin_closed_is_not_used() -> None:
    async def one_answer(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(OK)  # keep-alive as far as HTTP goes, then gone

    with trio.fail_after(10):
        async with scripted_origin(one_answer) as origin, pooled() as pool:
            assert (await fetch(pool, "GET", origin.url())).text == "ok"
            await origin.wait_ended(1)  # the origin has closed it
            await trio.testing.wait_all_tasks_blocked()
            # A body is never retried, so this only works if the dead one is skipped.
            response = await fetch(pool, "POST", origin.url(), content=b"payload")
    assert response.text == "ok"
    assert origin.connections == 2


async def drop_the_second_request(peer: Peer, index: int) -> None:
    """The first connection answers once, then reads the next request and closes."""
    if index > 0:
        await answer_all(peer, index)
        return
    await peer.read_request()
    await peer.send(OK)
    await peer.read_head()


async def test_a_reused_connection_dropped_as_the_request_arrives_is_retried_once() -> None:
    with trio.fail_after(10):
        async with scripted_origin(drop_the_second_request) as origin, pooled() as pool:
            first = await fetch(pool, "GET", origin.url("/first"))
            second = await fetch(pool, "GET", origin.url("/second"))
    assert (first.text, second.text) == ("ok", "ok")
    assert origin.connections == 2
    assert [len(heads) for heads in origin.heads] == [2, 1]  # /second went twice
    assert origin.heads[1][0].startswith(b"GET /second ")


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"])
async def test_idempotent_methods_are_retried(method: str) -> None:
    with trio.fail_after(10):
        async with scripted_origin(drop_the_second_request) as origin, pooled() as pool:
            await fetch(pool, "GET", origin.url("/first"))
            with await send(pool, method, origin.url("/second")) as response:
                pass
    assert response.status == 200
    assert [len(heads) for heads in origin.heads] == [2, 1]
    assert origin.heads[1][0].startswith(method.encode() + b" /second ")


@pytest.mark.parametrize("method", ["POST", "PATCH", "LOCK"])
async def test_a_bodiless_non_idempotent_request_is_never_sent_twice(method: str) -> None:
    """The origin may have acted on it before closing: replaying could do it twice."""
    with trio.fail_after(10):
        async with scripted_origin(drop_the_second_request) as origin, pooled() as pool:
            await fetch(pool, "GET", origin.url("/first"))
            with pytest.raises(OriginError, match="without answering") as caught:
                await fetch(pool, method, origin.url("/second"))
    assert caught.value.status == 502
    assert origin.connections == 1
    assert [len(heads) for heads in origin.heads] == [2]
    assert origin.heads[0][1].startswith(method.encode() + b" /second ")


async def test_a_request_with_a_body_is_not_retried() -> None:
    with trio.fail_after(10):
        async with scripted_origin(drop_the_second_request) as origin, pooled() as pool:
            await fetch(pool, "GET", origin.url())
            with pytest.raises(OriginError, match=r"without answering|reset"):
                await fetch(pool, "POST", origin.url(), content=b"not twice")
    assert origin.connections == 1


async def test_a_new_connection_that_drops_the_request_is_not_retried() -> None:
    async def drop(peer: Peer, index: int) -> None:
        await peer.read_head()

    with trio.fail_after(10):
        async with scripted_origin(drop) as origin, pooled() as pool:
            with pytest.raises(OriginError, match="closed the connection"):
                await fetch(pool, "GET", origin.url())
    assert origin.connections == 1


async def test_a_connection_close_answer_is_not_reused() -> None:
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def says_close_but_stays(peer: Peer, index: int) -> None:
        while await peer.read_request() is not None:
            await peer.send(close)

    with trio.fail_after(10):
        async with scripted_origin(says_close_but_stays) as origin, pooled() as pool:
            for _ in range(2):
                assert (await fetch(pool, "GET", origin.url())).text == "ok"
            assert pool.statistics().idle == 0
    assert origin.connections == 2


# -- answers --------------------------------------------------------------------------------


async def test_head_204_and_304_have_no_body_and_release_the_connection(
    origin: HTTPOrigin,
) -> None:
    with trio.fail_after(10):
        async with pooled() as pool:
            head = await fetch(pool, "HEAD", origin.url("/stream?n=5000"))
            no_content = await fetch(pool, "GET", origin.url("/status/204"))
            not_modified = await fetch(pool, "GET", origin.url("/status/304"))
            # Closed without reading: the answer is complete, so the connection stays.
            unread = await send(pool, "GET", origin.url("/status/204"))
            unread.close()
            assert pool.statistics().idle == 1
            after = await fetch(pool, "GET", origin.url("/echo"))
    assert (head.status, head.headers[-1], head.body) == (200, (b"content-length", b"5000"), b"")
    assert (no_content.status, no_content.body) == (204, b"")
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert after.status == 200
    assert origin.connections == 1


async def test_informational_answers_are_skipped_and_header_casing_kept() -> None:
    async def with_100(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 Fine\r\nX-Mixed-Case: v\r\ncontent-length: 2\r\n\r\nok"
        )

    with trio.fail_after(10):
        async with scripted_origin(with_100) as origin, pooled() as pool:
            response = await fetch(pool, "GET", origin.url())
    assert (response.status, response.reason, response.text) == (200, b"Fine", "ok")
    assert response.headers == ((b"X-Mixed-Case", b"v"), (b"content-length", b"2"))


async def test_a_chunked_answer_is_de_framed(origin: HTTPOrigin) -> None:
    n = 300_000
    with trio.fail_after(10):
        async with pooled() as pool:
            response = await fetch(pool, "GET", origin.url(f"/stream?n={n}&chunked=1&chunk=10000"))
            again = await fetch(pool, "GET", origin.url("/echo"))
    assert (b"Transfer-Encoding", b"chunked") in response.headers
    assert response.body == pattern_bytes(n)
    assert again.status == 200
    assert origin.connections == 1


async def test_the_piece_that_ends_a_body_comes_back_complete(origin: HTTPOrigin) -> None:
    """An end already buffered behind a piece is seen with it: `complete` is set and the
    connection is back in the pool before the caller asks again (the server then sends the
    piece and the end as one frame)."""
    with trio.fail_after(10):
        async with pooled() as pool:
            for query in ("n=1000", "n=300000&chunked=1&chunk=10000", "n=3000000"):
                pieces: list[tuple[int, bool, int]] = []
                with await send(pool, "GET", origin.url(f"/stream?{query}")) as response:
                    while chunk := await response.receive_some():
                        pieces.append((len(chunk), response.complete, pool.statistics().idle))
                    assert response.complete
                *before, last = pieces
                assert all(not complete and idle == 0 for _, complete, idle in before), query
                if last[1]:  # the end came with the last piece: released with it
                    assert last[2] == 1, query
                assert pool.statistics().idle == 1
                if query == "n=1000":  # one small answer: its one piece is the last
                    assert pieces == [(1000, True, 1)]
    assert origin.connections == 1


async def test_a_large_body_streams_in_bounded_pieces(origin: HTTPOrigin) -> None:
    n = 20 * MB
    digest = hashlib.sha256()
    received = 0
    with trio.fail_after(30):
        async with pooled() as pool:
            with await send(pool, "GET", origin.url(f"/stream?n={n}")) as response:
                while chunk := await response.receive_some():
                    assert len(chunk) <= READ_SIZE
                    digest.update(chunk)
                    received += len(chunk)
            assert pool.statistics().idle == 1
    assert (received, digest.hexdigest()) == (n, pattern_sha256(n))


def split_answer(body: bytes, head_extra: bytes = b"", version: bytes = b"1.1") -> Script:
    """Answer each request with `body` by Content-Length: the head and the first byte first,
    then (once the client has read them) the rest in pieces, so most of it arrives after h11
    has handed out what it had and is read straight from the socket."""

    async def script(peer: Peer, index: int) -> None:
        while await peer.read_request() is not None:
            head = b"HTTP/%s 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (
                version,
                len(body),
                head_extra,
            )
            await peer.send(head + body[:1])
            await trio.sleep(0.05)
            for i in range(1, len(body), 7000):
                await peer.send(body[i : i + 7000])

    return script


async def test_a_length_framed_body_read_from_the_socket_keeps_the_connection() -> None:
    body = pattern_bytes(100_000)
    with trio.fail_after(10):
        async with scripted_origin(split_answer(body)) as origin, pooled() as pool:
            for _ in range(3):
                fetched = await fetch(pool, "GET", origin.url("/"))
                assert fetched.body == body
                assert pool.statistics().idle == 1
    assert origin.connections == 1


@pytest.mark.parametrize(("version", "extra"), [(b"1.1", b"Connection: close\r\n"), (b"1.0", b"")])
async def test_a_length_framed_body_of_a_closing_answer_does_not_pool(
    version: bytes, extra: bytes
) -> None:
    body = pattern_bytes(50_000)
    with trio.fail_after(10):
        async with scripted_origin(split_answer(body, extra, version)) as origin, pooled() as pool:
            for _ in range(2):
                assert (await fetch(pool, "GET", origin.url("/"))).body == body
                assert pool.statistics().idle == 0
    assert origin.connections == 2


async def test_an_origin_silent_mid_body_is_a_read_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stall(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst")
        assert await peer.read_head() is None  # nothing more: the client closes

    with trio.fail_after(100):
        async with scripted_origin(stall) as origin, pooled(read_timeout=30) as pool:
            with await send(pool, "GET", origin.url("/")) as response:
                assert await response.receive_some() == b"first"
                with pytest.raises(OriginTimeout, match="sent nothing for 30 s"):
                    await response.receive_some()
            assert pool.statistics().idle == 0
            await origin.wait_ended(1)  # the connection was closed


async def test_a_reader_that_stops_stops_the_origin(origin: HTTPOrigin) -> None:
    """Nothing reads ahead of the caller: the body is streamed, never accumulated."""
    with trio.fail_after(20):
        async with pooled() as pool:
            with await send(pool, "GET", origin.url(f"/stream?n={1024 * MB}")) as response:
                await response.receive_some()
                while True:  # until the origin stalls on full socket buffers
                    before = origin.streamed
                    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                    if origin.streamed == before:
                        break
            assert pool.statistics().idle == 0  # closed unfinished: not kept
    assert origin.streamed < 64 * MB  # what the kernel's socket buffers can hold, at most


async def test_request_bodies_stream_chunked_or_with_a_length(origin: HTTPOrigin) -> None:
    n = 3 * MB
    with trio.fail_after(20):
        async with pooled() as pool:
            chunked = await fetch(
                pool,
                "PUT",
                origin.url("/upload"),
                [(b"Transfer-Encoding", b"chunked")],
                body=Chunks(pattern_chunks(n, 50_000)),
            )
            length = await fetch(
                pool,
                "PUT",
                origin.url("/upload"),
                [(b"Content-Length", b"%d" % n)],
                body=Chunks(pattern_chunks(n, 70_000)),
            )
    expected = {"received": n, "sha256": pattern_sha256(n)}
    assert chunked.json() == {**expected, "framing": "chunked"}
    assert length.json() == {**expected, "framing": "content-length"}
    assert origin.connections == 1


async def test_an_early_answer_to_an_upload_is_read() -> None:
    async def refuse(peer: Peer, index: int) -> None:
        await peer.read_head()
        await peer.send(
            b"HTTP/1.1 413 Too Big\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
        )

    endless = Chunks(pattern_chunks(64 * MB, 65536))
    with trio.fail_after(20):
        async with scripted_origin(refuse) as origin, pooled() as pool:
            response = await fetch(
                pool,
                "POST",
                origin.url("/upload"),
                [(b"Transfer-Encoding", b"chunked")],
                body=endless,
            )
            assert pool.statistics().idle == 0
    assert (response.status, response.text) == (413, "big!")


# -- TLS ------------------------------------------------------------------------------------


async def test_https_with_the_test_ca(
    tls_origin: HTTPOrigin, tls: TestTLS, static_resolver: StaticResolver
) -> None:
    with trio.fail_after(10):
        async with pooled(verify=tls.client) as pool:
            first = await fetch(pool, "GET", tls_origin.url("/echo"))
            second = await fetch(pool, "GET", tls_origin.url("/echo"))
            by_name = await fetch(pool, "GET", f"https://origin.test:{tls_origin.port}/echo")
            assert pool.statistics().idle == 2  # one per (scheme, host, port)
    assert (first.status, second.status, by_name.status) == (200, 200, 200)
    assert by_name.json()["headers"][0] == ["Host", f"origin.test:{tls_origin.port}"]
    assert tls_origin.connections == 2


async def test_an_untrusted_certificate_fails_with_the_reason(tls_origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with pooled(verify=ssl.create_default_context()) as pool:
            with pytest.raises(OriginError) as caught:
                await fetch(pool, "GET", tls_origin.url("/echo"))
    assert caught.value.status == 502
    assert str(caught.value) == "TLS handshake with 127.0.0.1 failed: CERTIFICATE_VERIFY_FAILED"


async def test_alpn_offers_http11_on_the_pools_own_context_and_leaves_a_callers_alone(
    tls: TestTLS,
) -> None:
    """The pool's context says HTTP/1.1; one a caller hands it (maybe shared) is not changed."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.ca.issue_cert(HOST).configure_cert(server)
    server.set_alpn_protocols(["h2", "http/1.1"])
    own = origin_ssl_context(cadata=tls.ca.cert_pem.bytes().decode("ascii"))
    callers = ssl.create_default_context()
    tls.ca.configure_trust(callers)
    with trio.fail_after(10):
        async with scripted_origin(answer_all, tls=server) as origin:
            for context in (own, callers, own):
                async with pooled(verify=context) as pool:
                    assert (await fetch(pool, "GET", origin.url())).text == "ok"
    assert origin.alpn == ["http/1.1", None, "http/1.1"]


# -- failures -------------------------------------------------------------------------------


async def test_a_silent_origin_is_a_read_timeout(
    origin: HTTPOrigin, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(100):
        async with pooled(read_timeout=30) as pool:
            start = trio.current_time()
            with pytest.raises(OriginTimeout, match="the origin sent nothing for 30 s") as caught:
                await fetch(pool, "GET", origin.url("/hang"))
            waited = trio.current_time() - start
            assert pool.statistics().idle == 0
    assert caught.value.status == 504
    assert 30 <= waited < 31


async def test_an_origin_that_reads_nothing_is_a_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def deaf(peer: Peer, index: int) -> None:
        await trio.sleep_forever()

    endless = Chunks(pattern_chunks(1024 * MB, 65536))
    with trio.fail_after(100):
        async with scripted_origin(deaf) as origin, pooled(write_timeout=20) as pool:
            with pytest.raises(OriginTimeout, match="read nothing for 20 s"):
                await fetch(
                    pool,
                    "POST",
                    origin.url(),
                    [(b"Content-Length", b"%d" % (1024 * MB))],
                    body=endless,
                )


# A bodiless request waits for its one write and for the answer under one cancel scope:
# which wait ran out must still pick the error and its timeout. (A head too big for the
# socket buffers makes the write wait.)

HUGE = [(b"X-Padding", b"x" * (16 * MB))]


async def test_a_request_head_the_origin_does_not_read_is_a_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def deaf(peer: Peer, index: int) -> None:
        await trio.sleep_forever()

    with trio.fail_after(100):
        async with (
            scripted_origin(deaf) as origin,
            pooled(read_timeout=30, write_timeout=20) as pool,
        ):
            start = trio.current_time()
            with pytest.raises(OriginTimeout, match="the origin read nothing for 20 s"):
                await fetch(pool, "GET", origin.url(), HUGE)
            waited = trio.current_time() - start
            assert pool.statistics().idle == 0
    assert 20 <= waited < 21


async def test_the_read_timeout_starts_when_the_write_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_then_silent(peer: Peer, index: int) -> None:
        await trio.sleep(15)  # the write waits 15 s of its 20
        seen = b""
        while b"\r\n\r\n" not in seen:  # the whole head, read and dropped
            seen = seen[-3:] + await peer.stream.receive_some(MB)
        await trio.sleep_forever()

    with trio.fail_after(100):
        async with (
            scripted_origin(slow_then_silent) as origin,
            pooled(read_timeout=30, write_timeout=20) as pool,
        ):
            start = trio.current_time()
            with pytest.raises(OriginTimeout, match="the origin sent nothing for 30 s"):
                await fetch(pool, "GET", origin.url(), HUGE)
            waited = trio.current_time() - start
    assert 45 <= waited < 46


async def test_a_write_that_ends_past_its_deadline_still_gets_the_answer(
    origin: HTTPOrigin, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    real_send_all = trio.SocketStream.send_all

    async def slow_to_return(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        await real_send_all(self, data)
        if self.socket.getpeername()[1] == origin.port:  # the client's side only
            with trio.CancelScope(shield=True):
                await trio.sleep(25)  # the write's 20 s deadline passes, but it completed

    monkeypatch.setattr(trio.SocketStream, "send_all", slow_to_return)
    with trio.fail_after(100):
        async with pooled(read_timeout=30, write_timeout=20) as pool:
            response = await fetch(pool, "GET", origin.url("/echo"))
    assert response.status == 200


async def test_connect_errors_pass_through_untouched(origin: HTTPOrigin) -> None:
    with trio.socket.socket() as sock:  # a port with nothing listening
        await sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with pooled() as pool:
            with pytest.raises(ConnectRefused) as refused:
                await fetch(pool, "GET", f"http://{HOST}:{port}/")
        async with pooled(EgressPolicy()) as pool:
            with pytest.raises(EgressDenied) as denied:
                await fetch(pool, "GET", origin.url("/echo"))
    assert (refused.value.status, refused.value.reason) == (
        502,
        f"connection to {HOST}:{port} refused",
    )
    assert denied.value.status == 403
    assert origin.connections == 0


async def test_protocol_errors_are_502_and_a_request_h11_refuses_is_400(
    origin: HTTPOrigin,
) -> None:
    async def junk(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(b"SPDY/9 what\r\n\r\n")

    with trio.fail_after(10):
        async with scripted_origin(junk) as bad, pooled() as pool:
            with pytest.raises(OriginError, match=r"broke HTTP/1\.1"):
                await fetch(pool, "GET", bad.url())
            with pytest.raises(OriginError, match=r"complete message body"):
                await fetch(pool, "GET", origin.url("/truncate?n=100000"))
            with pytest.raises(InvalidRequest, match="Too little data") as short:
                await fetch(
                    pool,
                    "POST",
                    origin.url("/upload"),
                    [(b"Content-Length", b"10")],
                    body=Chunks([b"abc"]),
                )
            with pytest.raises(InvalidRequest, match=r"Illegal header value$") as bad_value:
                await fetch(pool, "GET", origin.url("/echo"), [(b"X-Secret", b"s3cret\x00")])
            assert pool.statistics().idle == 0
    assert (short.value.status, bad_value.value.status) == (400, 400)
    assert "s3cret" not in bad_value.value.reason


# -- cancellation, limits, expiry, closing ------------------------------------------------


async def test_a_download_cancelled_mid_body_does_not_pool_its_connection(
    origin: HTTPOrigin,
) -> None:
    with trio.fail_after(10):
        async with pooled() as pool:
            url = origin.url(f"/stream?n={10 * MB}")
            with trio.CancelScope() as scope, await send(pool, "GET", url) as response:
                while await response.receive_some():
                    scope.cancel()  # lands in the pool's next read
            assert scope.cancelled_caught
            assert pool.statistics().idle == 0
            after = await fetch(pool, "GET", origin.url("/echo"))
    assert after.status == 200
    assert origin.connections == 2


async def test_a_request_cancelled_before_the_answer_does_not_pool_its_connection(
    origin: HTTPOrigin, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(100):
        async with pooled(read_timeout=60) as pool:
            with trio.move_on_after(5) as scope:
                await fetch(pool, "GET", origin.url("/hang"))
            assert scope.cancelled_caught
            assert pool.statistics().idle == 0
            await fetch(pool, "GET", origin.url("/echo"))
    assert origin.connections == 2


async def test_the_idle_cap_is_kept(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with pooled(max_idle=2) as pool:
            with ExitStack() as stack:  # four at once: four connections
                responses = [
                    stack.enter_context(await send(pool, "GET", origin.url("/echo")))
                    for _ in range(4)
                ]
                for response in responses:  # complete: back to the pool, or over the cap
                    while await response.receive_some():
                        pass
            assert pool.statistics().idle == 2
            assert origin.connections == 4
            for _ in range(3):
                await fetch(pool, "GET", origin.url("/echo"))
    assert origin.connections == 4


async def test_expired_connections_are_not_reused(
    origin: HTTPOrigin, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(1000):
        async with http_origin() as other, pooled(keepalive_expiry=30) as pool:
            await fetch(pool, "GET", origin.url("/echo"))
            await trio.sleep(29)
            await fetch(pool, "GET", origin.url("/echo"))
            assert origin.connections == 1
            await trio.sleep(31)
            await fetch(pool, "GET", origin.url("/echo"))
            assert origin.connections == 2
            # An expired one is also closed when another connection is released.
            await trio.sleep(31)
            await fetch(pool, "GET", other.url("/echo"))
            assert pool.statistics().idle == 1


async def test_closing_dropped_connections_never_waits(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Evicted, dead and expired connections are closed where they are dropped, by closing
    the socket: nothing on the request path waits for a close."""
    origin_ports: set[int] = set()
    awaited: list[int] = []
    real_aclose = trio.SocketStream.aclose

    async def recording(self: trio.SocketStream) -> None:
        if self.socket.fileno() >= 0:  # (trio closes an origin's stream again at the end)
            port = self.socket.getsockname()[1]
            if port not in origin_ports:  # the pool's side, not an origin closing its own
                awaited.append(port)
        await real_aclose(self)

    monkeypatch.setattr(trio.SocketStream, "aclose", recording)

    async def one_answer(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(OK)

    with trio.fail_after(1000):
        async with (
            scripted_origin(answer_all) as keeps,
            scripted_origin(one_answer) as drops,
            pooled(max_idle=1, keepalive_expiry=30) as pool,
        ):
            origin_ports.update((keeps.port, drops.port))
            await fetch(pool, "GET", keeps.url())
            await fetch(pool, "GET", drops.url())  # over the cap: the first is evicted
            await trio.testing.wait_all_tasks_blocked()
            assert (keeps.ended, drops.ended) == (1, 1)
            await fetch(pool, "GET", drops.url())  # the idle one is found dead
            await fetch(pool, "GET", keeps.url())  # evicts the one to `drops`
            await trio.sleep(31)
            await fetch(pool, "GET", keeps.url())  # the idle one is found expired
            await trio.testing.wait_all_tasks_blocked()
            assert (keeps.ended, drops.ended, keeps.connections) == (2, 2, 3)
            assert awaited == []


async def test_idle_connections_are_closed_as_they_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With close_expired running, an idle connection is closed when it expires, not at the
    next request; one reused meanwhile lives on (its expiry starts again)."""
    with trio.fail_after(1000):
        async with (
            scripted_origin(answer_all) as origin,
            pooled(keepalive_expiry=30) as pool,
            trio.open_nursery() as n,
        ):
            n.start_soon(pool.close_expired)
            await fetch(pool, "GET", origin.url())
            await trio.sleep(20)
            await fetch(pool, "GET", origin.url())  # reused: 30 s from now
            await trio.sleep(20)
            assert (pool.statistics().idle, origin.ended) == (1, 0)
            await trio.sleep(11)
            assert pool.statistics().idle == 0
            await origin.wait_ended(1)
            assert origin.ended == 1
            # Nothing idle: it waits for the next release, then for that one's expiry.
            await fetch(pool, "GET", origin.url())
            await trio.sleep(31)
            assert pool.statistics().idle == 0
            await origin.wait_ended(2)
            assert origin.ended == 2
            n.cancel_scope.cancel()


async def test_close_expired_returns_when_the_pool_closes() -> None:
    with trio.fail_after(10):
        async with scripted_origin(answer_all) as origin:
            async with trio.open_nursery() as nursery, pooled() as pool:
                nursery.start_soon(pool.close_expired)
                await fetch(pool, "GET", origin.url())
                await trio.testing.wait_all_tasks_blocked()
            # The nursery closed by itself: close_expired returned once the pool closed.
            await origin.wait_ended(1)
            assert origin.ended == 1


async def test_closing_the_pool_closes_idle_connections_and_keeps_none_after() -> None:
    with trio.fail_after(10):
        async with scripted_origin(answer_all) as origin, pooled() as pool:
            with await send(pool, "GET", origin.url()) as in_use:
                await fetch(pool, "GET", origin.url())  # a second connection, now idle
                assert (pool.statistics().idle, origin.connections) == (1, 2)
                pool.close()
                assert pool.statistics().idle == 0
                await origin.wait_ended(1)  # the idle one
                assert origin.ended == 1
                assert await in_use.receive_some() == b"ok"
                assert await in_use.receive_some() == b""  # complete, but not kept
            await origin.wait_ended(2)
            assert (pool.statistics().idle, origin.ended) == (0, 2)
