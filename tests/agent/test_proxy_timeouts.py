"""The proxy's timeouts, in process with trio's mock clock (tunnel links joined in memory)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from fluidity.agent.proxy import Proxy, ProxySettings
from fluidity.protocol import Response, Settings
from fluidity.tunnel import LinkConfig, StreamReset, TunnelStream
from tests.agent.support import offline_proxy

from ..tunnel.helpers import linked_pair

SETTINGS = ProxySettings(head_timeout=5.0, idle_timeout=60.0)


def make_proxy() -> Proxy:
    return offline_proxy(SETTINGS)


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    received = b""
    while data := await stream.receive_some(4096):
        received += data
    return received


async def test_a_stalled_request_head_gets_408(autojump_clock: MockClock) -> None:
    client, served = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(make_proxy().handle, served)
        start = trio.current_time()
        await client.send_all(b"GET http://example.test/ HTTP/1.1\r\nHo")
        answer = await read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request head not received in time" in answer
    assert 5.0 <= trio.current_time() - start < 60.0  # the head timeout, not the idle one


async def test_an_idle_connection_is_closed_without_an_answer(autojump_clock: MockClock) -> None:
    client, served = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(make_proxy().handle, served)
        start = trio.current_time()
        answer = await read_until_closed(client)
    assert answer == b""
    assert trio.current_time() - start >= 60.0


async def test_a_full_tunnel_answers_503_and_keeps_serving(autojump_clock: MockClock) -> None:
    """With every stream the server allows in use, a new request waits `open_timeout`, then
    gets 503 with Retry-After (busy, not broken); once a stream frees, requests go through."""
    release = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await release.wait()
        await stream.send_reply(Response(stream.stream_id, 204, b"No Content", ()))
        await stream.send_eof()

    request = b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    server_config = LinkConfig(settings=Settings(max_streams=1))
    with trio.fail_after(120):
        async with linked_pair(handler, LinkConfig(open_timeout=7), server_config) as (link, _):
            proxy = make_proxy()
            proxy.tunnel.link = link
            async with trio.open_nursery() as nursery:
                first, served_first = trio.testing.memory_stream_pair()
                nursery.start_soon(proxy.handle, served_first)
                await first.send_all(request)
                await trio.testing.wait_all_tasks_blocked()  # it holds the only stream
                assert link.statistics().open_streams == 1

                second, served_second = trio.testing.memory_stream_pair()
                nursery.start_soon(proxy.handle, served_second)
                start = trio.current_time()
                await second.send_all(request)
                answer = await read_until_closed(second)
                assert answer.startswith(b"HTTP/1.1 503 ")
                assert b"retry-after: 1\r\n" in answer
                assert b"limit of 1 concurrent streams" in answer
                assert trio.current_time() - start == pytest.approx(7)

                release.set()
                assert (await first.receive_some(4096)).startswith(b"HTTP/1.1 204 ")
                third, served_third = trio.testing.memory_stream_pair()
                nursery.start_soon(proxy.handle, served_third)
                await third.send_all(request)
                assert (await third.receive_some(4096)).startswith(b"HTTP/1.1 204 ")
                nursery.cancel_scope.cancel()


async def test_a_paused_request_body_ends_the_connection_quietly(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that stops in the middle of its body loses its connection after the body
    timeout, and the origin's stream is reset; it is not an error of the agent's."""
    reset = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        try:
            while await stream.receive_some():
                pass
        except StreamReset:
            reset.set()

    with trio.fail_after(600):
        async with linked_pair(handler) as (link, _):
            proxy = make_proxy()
            proxy.tunnel.link = link
            async with trio.open_nursery() as nursery:
                client, served = trio.testing.memory_stream_pair()
                nursery.start_soon(proxy.handle, served)
                start = trio.current_time()
                await client.send_all(
                    b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n"
                    b"Content-Length: 10\r\n\r\nabc"
                )
                assert await read_until_closed(client) == b""
                await reset.wait()
    assert trio.current_time() - start == pytest.approx(SETTINGS.body_timeout)
    assert "error serving a client connection" not in caplog.text
