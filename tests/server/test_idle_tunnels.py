"""CONNECT tunnels and WebSockets that move nothing are ended, so they stop counting as activity.

The limits are a fraction of a second here; nothing sleeps: each test waits for the end it
expects (an EOF, a reset, a close) under a time cap, then checks what ended it and that the
server counts no open stream any more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

from fluidity.protocol import ErrorCode, WebSocketClose
from fluidity.tunnel import StreamReset, TunnelStream
from tests.server.harness import (
    ack_of,
    open_connect,
    open_websocket,
    read_all,
    receive_message,
    serving,
)
from tests.support.origins import ECHO_TRAILER, TCPOrigin, WebSocketOrigin, serve_loopback

LIMIT = 0.3


@attrs.define
class SilentOrigin:
    """Reads what it is sent and never answers, keeping its side open."""

    port: int = 0
    received: bytearray = attrs.field(factory=bytearray)
    #: Set when the client's EOF (or the server's close) arrived.
    eof: trio.Event = attrs.field(factory=trio.Event)


@asynccontextmanager
async def silent_origin() -> AsyncIterator[SilentOrigin]:
    origin = SilentOrigin()

    async def handle(tcp: trio.SocketStream) -> None:
        try:
            while data := await tcp.receive_some(65536):
                origin.received += data
        except trio.BrokenResourceError:
            pass
        origin.eof.set()
        await trio.sleep_forever()  # silent, its side still open

    async with serve_loopback(handle) as origin.port:
        yield origin


async def test_a_half_closed_tunnel_to_a_silent_origin_ends_with_an_eof() -> None:
    with trio.fail_after(10):
        async with silent_origin() as origin, serving(half_closed_timeout=LIMIT) as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", origin.port)
            await stream.send_all(b"anyone there?")
            start = trio.current_time()
            await stream.send_eof()
            await origin.eof.wait()
            assert await read_all(stream) == b""  # an EOF, not a reset
            waited = trio.current_time() - start
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert bytes(origin.received) == b"anyone there?"
    assert waited >= LIMIT  # the limit, not at once


async def read_into(stream: TunnelStream, sizes: list[int]) -> None:
    """Read `stream` to its end, noting the size of each read."""
    while data := await stream.receive_some():
        sizes.append(len(data))


async def test_a_half_closed_tunnel_the_agent_stopped_reading_is_reset_not_ended() -> None:
    """The origin still has bytes to send when the agent's reader stalls: the tunnel waits for
    the agent's credit, not for the origin, so its end must not look complete (no EOF)."""
    sent = 0
    closed = trio.Event()

    async def talkative(tcp: trio.SocketStream) -> None:
        nonlocal sent
        chunk = bytes(65536)
        try:
            while True:
                await tcp.send_all(chunk)
                sent += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed.set()  # the server gave up on the tunnel and closed this connection

    with trio.fail_after(10):
        async with serve_loopback(talkative) as port, serving(half_closed_timeout=LIMIT) as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", port)
            start = trio.current_time()
            await stream.send_eof()
            await closed.wait()  # nothing read meanwhile
            waited = trio.current_time() - start
            received = []
            with pytest.raises(StreamReset) as caught:
                await read_into(stream, received)
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert waited >= LIMIT
    assert 0 < sum(received) < sent
    assert "half_closed_timeout" in str(caught.value)


async def test_a_tunnel_where_nothing_moves_is_reset_naming_the_setting() -> None:
    with trio.fail_after(10):
        async with silent_origin() as origin, serving(idle_timeout=LIMIT) as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", origin.port)
            with pytest.raises(StreamReset) as caught:
                await stream.receive_some()
            await origin.eof.wait()  # the server closed the origin's socket
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert caught.value.code == ErrorCode.CANCEL
    assert "nothing moved for 0.3 s (tunnel_idle_timeout)" in str(caught.value)


async def test_bytes_moving_keep_a_tunnel_open_past_the_limit(echo_origin: TCPOrigin) -> None:
    with trio.fail_after(10):
        async with serving(idle_timeout=LIMIT) as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", echo_origin.port)
            start = trio.current_time()
            rounds = 0
            while trio.current_time() - start < 3 * LIMIT:  # real round trips, no sleeping
                await stream.send_all(b"ping")
                assert await stream.receive_some(4) == b"ping"
                rounds += 1
            await stream.send_eof()
            assert await read_all(stream) == ECHO_TRAILER
    assert rounds > 10


async def test_an_idle_websocket_is_closed_with_1001_both_ways(
    ws_origin: WebSocketOrigin,
) -> None:
    with trio.fail_after(10):
        async with serving(idle_timeout=LIMIT) as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            await stream.send_ws(b"hello", binary=False)
            assert await receive_message(stream) == (False, b"hello")
            close = await receive_message(stream)
            assert isinstance(close, WebSocketClose)
            await stream.send_ws_close(close.code, close.reason)  # the agent's echo
            closes = await ws_origin.wait_closes(1)
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert close.code == 1001
    assert "tunnel_idle_timeout" in close.reason
    assert closes[0][0] == 1001
