"""The proxy's client-side timeouts, in process with trio's mock clock (no tunnel needed)."""

from __future__ import annotations

import ssl

import trio
import trio.testing
from trio.testing import MockClock

from fluidity.agent.proxy import Proxy, ProxySettings
from fluidity.agent.tunnel_client import TunnelClient
from fluidity.tunnel import LinkConfig

SETTINGS = ProxySettings(head_timeout=5.0, idle_timeout=60.0)


def make_proxy() -> Proxy:
    tunnel = TunnelClient(
        "127.0.0.1",
        9,
        ssl_context=ssl.create_default_context(),
        server_name="unused",
        link_config=LinkConfig(),
    )
    return Proxy(tunnel, SETTINGS, health=lambda: (200, {}))


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
