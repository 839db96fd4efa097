"""The origin pool (the shared client's transport) against real origins on loopback.

`origin` / `tls_origin` are the h11 test origins; `scripted_origin` runs a few lines per
connection for what a well-behaved origin never does (drop a request, answer early, lie about
keep-alive).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Any

import httpx2
import pytest
import trio
import trio.testing

from fluidity.server.egress import ConnectRefused, EgressDenied, EgressPolicy
from fluidity.server.origin_pool import READ_SIZE, OriginPool
from fluidity.server.resolver import StaticResolver
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
from tests.support.scripted import OK, Peer, answer_all, scripted_origin

MB = 1024 * 1024


@asynccontextmanager
async def pooled(
    policy: EgressPolicy = LOOPBACK,
    *,
    verify: ssl.SSLContext | None = None,
    read_timeout: float = 10.0,
    write_timeout: float = 10.0,
    **options: Any,
) -> AsyncIterator[tuple[httpx2.AsyncClient, OriginPool]]:
    """A client on an OriginPool (no TLS trust unless `verify` is given)."""
    context = verify or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pool = OriginPool(policy, 5.0, context, **options)
    timeout = httpx2.Timeout(5.0, read=read_timeout, write=write_timeout)
    async with httpx2.AsyncClient(transport=pool, timeout=timeout) as client:
        yield client, pool


# -- keep-alive -----------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with pooled() as (client, pool):
            for _ in range(3):
                response = await client.get(origin.url("/echo"))
                assert response.status_code == 200
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
        async with pooled() as (client, _):
            await client.get(origin.url("/echo"))
            assert len(writes) == 1
            await client.post(origin.url("/upload"), content=b"x" * 1000)  # head and body
    assert len(writes) == 2
    assert origin.connections == 1


async def test_the_request_goes_out_as_given(origin: HTTPOrigin) -> None:
    headers = [(b"Host", b"origin.test"), (b"X-Mixed-Case", b"One"), (b"accept", b"*/*")]
    with trio.fail_after(10):
        async with pooled() as (client, _):
            request = httpx2.Request(
                "GET",
                origin.url("/echo"),
                headers=headers,
                stream=httpx2.ByteStream(b""),
                extensions={"target": b"/echo/a/../b?x=%41"},
            )
            given = await client.send(request)
            plain = await client.get(origin.url("/echo/./c?q=%41"))
            teapot = await client.get(origin.url("/status/418"))
    assert given.json()["target"] == "/echo/a/../b?x=%41"
    assert given.json()["headers"] == [[n.decode(), v.decode()] for n, v in headers]
    assert plain.json()["target"] == "/echo/c?q=%41"  # httpx2's own normalized form
    assert (teapot.status_code, teapot.reason_phrase, teapot.http_version) == (
        418,
        "I'm a Teapot",
        "HTTP/1.1",
    )


async def test_an_idle_connection_the_origin_closed_is_not_used() -> None:
    async def one_answer(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(OK)  # keep-alive as far as HTTP goes, then gone

    with trio.fail_after(10):
        async with scripted_origin(one_answer) as origin, pooled() as (client, _):
            assert (await client.get(origin.url())).text == "ok"
            await origin.wait_ended(1)  # the origin has closed it
            await trio.testing.wait_all_tasks_blocked()
            # A body is never retried, so this only works if the dead one is skipped.
            response = await client.post(origin.url(), content=b"payload")
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
        async with scripted_origin(drop_the_second_request) as origin, pooled() as (client, _):
            first = await client.get(origin.url("/first"))
            second = await client.get(origin.url("/second"))
    assert (first.text, second.text) == ("ok", "ok")
    assert origin.connections == 2
    assert [len(heads) for heads in origin.heads] == [2, 1]  # /second went twice
    assert origin.heads[1][0].startswith(b"GET /second ")


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"])
async def test_idempotent_methods_are_retried(method: str) -> None:
    with trio.fail_after(10):
        async with scripted_origin(drop_the_second_request) as origin, pooled() as (client, _):
            await client.get(origin.url("/first"))
            response = await client.request(method, origin.url("/second"))
    assert response.status_code == 200
    assert [len(heads) for heads in origin.heads] == [2, 1]
    assert origin.heads[1][0].startswith(method.encode() + b" /second ")


@pytest.mark.parametrize("method", ["POST", "PATCH", "LOCK"])
async def test_a_bodiless_non_idempotent_request_is_never_sent_twice(method: str) -> None:
    """The origin may have acted on it before closing: replaying could do it twice."""
    with trio.fail_after(10):
        async with scripted_origin(drop_the_second_request) as origin, pooled() as (client, _):
            await client.get(origin.url("/first"))
            with pytest.raises(httpx2.RemoteProtocolError, match="without answering"):
                await client.request(method, origin.url("/second"))
    assert origin.connections == 1
    assert [len(heads) for heads in origin.heads] == [2]
    assert origin.heads[0][1].startswith(method.encode() + b" /second ")


async def test_a_request_with_a_body_is_not_retried() -> None:
    with trio.fail_after(10):
        async with scripted_origin(drop_the_second_request) as origin, pooled() as (client, _):
            await client.get(origin.url())
            with pytest.raises(httpx2.TransportError, match=r"without answering|reset"):
                await client.post(origin.url(), content=b"not twice")
    assert origin.connections == 1


async def test_a_new_connection_that_drops_the_request_is_not_retried() -> None:
    async def drop(peer: Peer, index: int) -> None:
        await peer.read_head()

    with trio.fail_after(10):
        async with scripted_origin(drop) as origin, pooled() as (client, _):
            with pytest.raises(httpx2.RemoteProtocolError, match="closed the connection"):
                await client.get(origin.url())
    assert origin.connections == 1


async def test_a_connection_close_answer_is_not_reused() -> None:
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def says_close_but_stays(peer: Peer, index: int) -> None:
        while await peer.read_request() is not None:
            await peer.send(close)

    with trio.fail_after(10):
        async with scripted_origin(says_close_but_stays) as origin, pooled() as (client, pool):
            for _ in range(2):
                assert (await client.get(origin.url())).text == "ok"
            assert pool.statistics().idle == 0
    assert origin.connections == 2


# -- answers --------------------------------------------------------------------------------


async def test_head_204_and_304_have_no_body_and_release_the_connection(
    origin: HTTPOrigin,
) -> None:
    with trio.fail_after(10):
        async with pooled() as (client, pool):
            head = await client.head(origin.url("/stream?n=5000"))
            no_content = await client.get(origin.url("/status/204"))
            not_modified = await client.get(origin.url("/status/304"))
            # Closed without reading: the answer is complete, so the connection stays.
            unread = await client.send(
                client.build_request("GET", origin.url("/status/204")), stream=True
            )
            await unread.aclose()
            assert pool.statistics().idle == 1
            after = await client.get(origin.url("/echo"))
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "5000", b"")
    assert (no_content.status_code, no_content.content) == (204, b"")
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert after.status_code == 200
    assert origin.connections == 1


async def test_informational_answers_are_skipped_and_header_casing_kept() -> None:
    async def with_100(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 Fine\r\nX-Mixed-Case: v\r\ncontent-length: 2\r\n\r\nok"
        )

    with trio.fail_after(10):
        async with scripted_origin(with_100) as origin, pooled() as (client, _):
            response = await client.get(origin.url())
    assert (response.status_code, response.reason_phrase, response.text) == (200, "Fine", "ok")
    assert response.headers.raw == [(b"X-Mixed-Case", b"v"), (b"content-length", b"2")]


async def test_a_chunked_answer_is_de_framed(origin: HTTPOrigin) -> None:
    n = 300_000
    with trio.fail_after(10):
        async with pooled() as (client, _):
            response = await client.get(origin.url(f"/stream?n={n}&chunked=1&chunk=10000"))
            again = await client.get(origin.url("/echo"))
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == pattern_bytes(n)
    assert again.status_code == 200
    assert origin.connections == 1


async def test_a_large_body_streams_in_bounded_pieces(origin: HTTPOrigin) -> None:
    n = 20 * MB
    digest = hashlib.sha256()
    received = 0
    with trio.fail_after(30):
        async with pooled() as (client, pool):
            async with client.stream("GET", origin.url(f"/stream?n={n}")) as response:
                async for chunk in response.aiter_raw():
                    assert len(chunk) <= READ_SIZE
                    digest.update(chunk)
                    received += len(chunk)
            assert pool.statistics().idle == 1
    assert (received, digest.hexdigest()) == (n, pattern_sha256(n))


async def test_a_reader_that_stops_stops_the_origin(origin: HTTPOrigin) -> None:
    """Nothing reads ahead of the caller: the body is streamed, never accumulated."""
    with trio.fail_after(20):
        async with (
            pooled() as (client, _),
            client.stream("GET", origin.url(f"/stream?n={1024 * MB}")) as response,
            aclosing(response.aiter_raw()) as chunks,
        ):
            await chunks.__anext__()
            while True:  # until the origin stalls on full socket buffers
                before = origin.streamed
                await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                if origin.streamed == before:
                    break
    assert origin.streamed < 64 * MB  # what the kernel's socket buffers can hold, at most


async def body(n: int, chunk: int) -> AsyncIterator[bytes]:
    for piece in pattern_chunks(n, chunk):
        await trio.lowlevel.checkpoint()
        yield piece


async def test_request_bodies_stream_chunked_or_with_a_length(origin: HTTPOrigin) -> None:
    n = 3 * MB
    with trio.fail_after(20):
        async with pooled() as (client, _):
            chunked = await client.put(origin.url("/upload"), content=body(n, 50_000))
            length = await client.put(
                origin.url("/upload"),
                content=body(n, 70_000),
                headers={"Content-Length": str(n)},
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

    with trio.fail_after(20):
        async with (
            scripted_origin(refuse) as origin,
            pooled() as (client, pool),
            aclosing(body(64 * MB, 65536)) as upload,
        ):
            response = await client.post(origin.url("/upload"), content=upload)
            assert pool.statistics().idle == 0
    assert (response.status_code, response.text) == (413, "big!")


# -- TLS ------------------------------------------------------------------------------------


async def test_https_with_the_test_ca(
    tls_origin: HTTPOrigin, tls: TestTLS, static_resolver: StaticResolver
) -> None:
    with trio.fail_after(10):
        async with pooled(verify=tls.client) as (client, pool):
            first = await client.get(tls_origin.url("/echo"))
            second = await client.get(tls_origin.url("/echo"))
            by_name = await client.get(f"https://origin.test:{tls_origin.port}/echo")
            assert pool.statistics().idle == 2  # one per (scheme, host, port)
    assert (first.status_code, second.status_code, by_name.status_code) == (200, 200, 200)
    assert by_name.json()["headers"][0] == ["Host", f"origin.test:{tls_origin.port}"]
    assert tls_origin.connections == 2


async def test_an_untrusted_certificate_fails_with_the_reason(tls_origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with pooled(verify=ssl.create_default_context()) as (client, _):
            with pytest.raises(httpx2.ConnectError) as caught:
                await client.get(tls_origin.url("/echo"))
    assert str(caught.value) == "TLS handshake with 127.0.0.1 failed: CERTIFICATE_VERIFY_FAILED"


# -- failures -------------------------------------------------------------------------------


async def test_a_silent_origin_is_a_read_timeout(
    origin: HTTPOrigin, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(100):
        async with pooled(read_timeout=30) as (client, pool):
            start = trio.current_time()
            with pytest.raises(httpx2.ReadTimeout, match="the origin sent nothing for 30 s"):
                await client.get(origin.url("/hang"))
            waited = trio.current_time() - start
            assert pool.statistics().idle == 0
    assert 30 <= waited < 31


async def test_an_origin_that_reads_nothing_is_a_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def deaf(peer: Peer, index: int) -> None:
        await trio.sleep_forever()

    with trio.fail_after(100):
        async with (
            scripted_origin(deaf) as origin,
            pooled(write_timeout=20) as (client, _),
            aclosing(body(1024 * MB, 65536)) as endless,
        ):
            with pytest.raises(httpx2.WriteTimeout, match="read nothing for 20 s"):
                await client.post(origin.url(), content=endless)


# A bodiless request waits for its one write and for the answer under one cancel scope:
# which wait ran out must still pick the error and its timeout. (A head too big for the
# socket buffers makes the write wait.)

HUGE = {"X-Padding": "x" * (16 * MB)}


async def test_a_request_head_the_origin_does_not_read_is_a_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def deaf(peer: Peer, index: int) -> None:
        await trio.sleep_forever()

    with trio.fail_after(100):
        async with (
            scripted_origin(deaf) as origin,
            pooled(read_timeout=30, write_timeout=20) as (client, pool),
        ):
            start = trio.current_time()
            with pytest.raises(httpx2.WriteTimeout, match="the origin read nothing for 20 s"):
                await client.get(origin.url(), headers=HUGE)
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
            pooled(read_timeout=30, write_timeout=20) as (client, _),
        ):
            start = trio.current_time()
            with pytest.raises(httpx2.ReadTimeout, match="the origin sent nothing for 30 s"):
                await client.get(origin.url(), headers=HUGE)
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
        async with pooled(read_timeout=30, write_timeout=20) as (client, _):
            response = await client.get(origin.url("/echo"))
    assert response.status_code == 200


async def test_connect_errors_pass_through_untouched(origin: HTTPOrigin) -> None:
    with trio.socket.socket() as sock:  # a port with nothing listening
        await sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with pooled() as (client, _):
            with pytest.raises(ConnectRefused) as refused:
                await client.get(f"http://{HOST}:{port}/")
        async with pooled(EgressPolicy()) as (client, _):
            with pytest.raises(EgressDenied) as denied:
                await client.get(origin.url("/echo"))
    assert (refused.value.status, refused.value.reason) == (
        502,
        f"connection to {HOST}:{port} refused",
    )
    assert denied.value.status == 403
    assert origin.connections == 0


async def test_protocol_errors_are_httpx_errors(origin: HTTPOrigin) -> None:
    async def junk(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(b"SPDY/9 what\r\n\r\n")

    with trio.fail_after(10):
        async with scripted_origin(junk) as bad, pooled() as (client, pool):
            with pytest.raises(httpx2.RemoteProtocolError, match=r"broke HTTP/1\.1"):
                await client.get(bad.url())
            with pytest.raises(httpx2.RemoteProtocolError, match=r"complete message body"):
                await client.get(origin.url("/truncate?n=100000"))
            with pytest.raises(httpx2.LocalProtocolError, match="Too little data"):
                await client.post(
                    origin.url("/upload"), content=b"abc", headers={"Content-Length": "10"}
                )
            assert pool.statistics().idle == 0


# -- cancellation, limits, expiry, closing ------------------------------------------------


async def test_a_download_cancelled_mid_body_does_not_pool_its_connection(
    origin: HTTPOrigin,
) -> None:
    with trio.fail_after(10):
        async with pooled() as (client, pool):
            with trio.CancelScope() as scope:
                async with client.stream("GET", origin.url(f"/stream?n={10 * MB}")) as response:
                    async for _ in response.aiter_raw():
                        scope.cancel()  # lands in the pool's next read
            assert scope.cancelled_caught
            assert pool.statistics().idle == 0
            after = await client.get(origin.url("/echo"))
    assert after.status_code == 200
    assert origin.connections == 2


async def test_a_request_cancelled_before_the_answer_does_not_pool_its_connection(
    origin: HTTPOrigin, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(100):
        async with pooled(read_timeout=60) as (client, pool):
            with trio.move_on_after(5) as scope:
                await client.get(origin.url("/hang"))
            assert scope.cancelled_caught
            assert pool.statistics().idle == 0
            await client.get(origin.url("/echo"))
    assert origin.connections == 2


async def test_the_idle_cap_is_kept(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with pooled(max_idle=2) as (client, pool):
            async with AsyncExitStack() as stack:
                responses = [  # four at once: four connections
                    await stack.enter_async_context(client.stream("GET", origin.url("/echo")))
                    for _ in range(4)
                ]
                for response in responses:
                    await response.aread()  # complete: back to the pool, or over the cap
            assert pool.statistics().idle == 2
            assert origin.connections == 4
            for _ in range(3):
                await client.get(origin.url("/echo"))
    assert origin.connections == 4


async def test_expired_connections_are_not_reused(
    origin: HTTPOrigin, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(1000):
        async with http_origin() as other, pooled(keepalive_expiry=30) as (client, pool):
            await client.get(origin.url("/echo"))
            await trio.sleep(29)
            await client.get(origin.url("/echo"))
            assert origin.connections == 1
            await trio.sleep(31)
            await client.get(origin.url("/echo"))
            assert origin.connections == 2
            # An expired one is also closed when another connection is released.
            await trio.sleep(31)
            await client.get(other.url("/echo"))
            assert pool.statistics().idle == 1


async def test_idle_connections_are_closed_as_they_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With close_expired running, an idle connection is closed when it expires, not at the
    next request; one reused meanwhile lives on (its expiry starts again)."""
    with trio.fail_after(1000):
        async with (
            scripted_origin(answer_all) as origin,
            pooled(keepalive_expiry=30) as (client, pool),
            trio.open_nursery() as n,
        ):
            n.start_soon(pool.close_expired)
            await client.get(origin.url())
            await trio.sleep(20)
            await client.get(origin.url())  # reused: 30 s from now
            await trio.sleep(20)
            assert (pool.statistics().idle, origin.ended) == (1, 0)
            await trio.sleep(11)
            assert pool.statistics().idle == 0
            await origin.wait_ended(1)
            assert origin.ended == 1
            # Nothing idle: it waits for the next release, then for that one's expiry.
            await client.get(origin.url())
            await trio.sleep(31)
            assert pool.statistics().idle == 0
            await origin.wait_ended(2)
            assert origin.ended == 2
            n.cancel_scope.cancel()


async def test_close_expired_returns_when_the_pool_closes() -> None:
    with trio.fail_after(10):
        async with scripted_origin(answer_all) as origin:
            async with trio.open_nursery() as nursery, pooled() as (client, pool):
                nursery.start_soon(pool.close_expired)
                await client.get(origin.url())
                await trio.testing.wait_all_tasks_blocked()
            # The nursery closed by itself: close_expired returned once the pool closed.
            await origin.wait_ended(1)
            assert origin.ended == 1


async def test_closing_the_pool_closes_idle_connections() -> None:
    with trio.fail_after(10):
        async with scripted_origin(answer_all) as origin:
            async with pooled() as (client, pool):
                await client.get(origin.url())
                await client.get(origin.url())
                assert (pool.statistics().idle, origin.ended) == (1, 0)
            assert pool.statistics().idle == 0
            await origin.wait_ended(1)
            assert origin.ended == 1
