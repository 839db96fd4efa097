"""The server's stream handler behind a real link, driven from the agent side in memory.

`serving(...)` runs an agent link and a server link joined by memory streams, the server
serving streams with a real `StreamHandler`; the helpers below play the agent's part.
(`linked_pair` is a copy of the one in tests/tunnel/conftest.py, kept here on purpose.)
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from fluidity.protocol import (
    Connect,
    ConnectAck,
    Request,
    Response,
    Role,
    WebSocketAck,
    WebSocketClose,
    WebSocketMessage,
    WebSocketOpen,
)
from fluidity.server.activity import ActivityTracker
from fluidity.server.egress import EgressPolicy
from fluidity.server.handler import StreamHandler, open_stream_handler
from fluidity.server.resolver import StaticResolver, install
from fluidity.tunnel import Link, LinkConfig, TunnelStream, open_link

Handler = Callable[[TunnelStream], Awaitable[None]]

#: What the tests allow by default: the local origins, nothing else of loopback.
LOOPBACK = EgressPolicy(allow=["127.0.0.1/32"])
#: Names the tests use; anything else fails like NXDOMAIN, without a query.
TEST_HOSTS = {
    "origin.test": "127.0.0.1",
    "metadata.test": "169.254.169.254",
    "loopback6.test": "::1",
}


@asynccontextmanager
async def linked_pair(
    handler: Handler,
    agent_config: LinkConfig | None = None,
    server_config: LinkConfig | None = None,
) -> AsyncIterator[tuple[Link, Link]]:
    """An agent link and a server link (running `handler` per stream) joined in memory."""
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        server_links: list[Link] = []

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            async with open_link(b, Role.SERVER, server_config, handler) as server:
                server_links.append(server)
                await server.wait_closed()

        await nursery.start(serve)
        async with open_link(a, Role.AGENT, agent_config) as agent:
            yield agent, server_links[0]
        nursery.cancel_scope.cancel()


@attrs.frozen
class Served:
    agent: Link
    server: Link
    handler: StreamHandler
    activity: ActivityTracker


@asynccontextmanager
async def serving(
    policy: EgressPolicy = LOOPBACK,
    *,
    verify: ssl.SSLContext | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    max_ws_message: int | None = None,
    idle_timeout: float | None = None,
    half_closed_timeout: float | None = None,
    config: LinkConfig | None = None,
    agent_config: LinkConfig | None = None,
    activity: ActivityTracker | None = None,
) -> AsyncIterator[Served]:
    """`config` is both links' (`agent_config`, if given, the agent's)."""
    install(StaticResolver(TEST_HOSTS, fallback_to_system=False))
    activity = activity or ActivityTracker()
    options = {
        "max_ws_message": max_ws_message,
        "idle_timeout": idle_timeout,
        "half_closed_timeout": half_closed_timeout,
    }
    extra: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    async with (
        open_stream_handler(
            policy,
            activity=activity,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            verify=verify,
            **extra,
        ) as handler,
        linked_pair(handler, agent_config or config, config) as (agent, server),
    ):
        yield Served(agent, server, handler, activity)


# -- playing the agent ----------------------------------------------------------------------


@attrs.frozen
class Exchange:
    """A complete HTTP exchange as the agent saw it."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for n, v in self.headers:
            if n.lower() == key:
                return v.decode("latin-1")
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def headers_of(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs)


async def send_body(stream: TunnelStream, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        await stream.send_all(chunk)
    await stream.send_eof()


async def read_all(stream: TunnelStream) -> bytes:
    body = bytearray()
    while data := await stream.receive_some():
        body += data
    return bytes(body)


async def exchange(
    agent: Link,
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    body: Iterable[bytes] | None = None,
) -> Exchange:
    """Send a request the way the agent does (body concurrently) and read the whole answer."""
    head = Request(0, method.encode(), url.encode(), headers_of(headers), end_stream=body is None)
    stream = await agent.open_stream(head)
    async with stream, trio.open_nursery() as nursery:
        if body is not None:
            nursery.start_soon(send_body, stream, body)
        reply = await stream.wait_reply()
        assert isinstance(reply, Response)
        data = await read_all(stream)
        nursery.cancel_scope.cancel()
    return Exchange(reply.status, reply.reason, reply.headers, data)


async def open_connect(agent: Link, host: str, port: int) -> tuple[TunnelStream, ConnectAck]:
    stream = await agent.open_stream(Connect(0, host, port))
    ack = await stream.wait_reply()
    assert isinstance(ack, ConnectAck)
    return stream, ack


async def open_websocket(
    agent: Link,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: tuple[str, ...] = (),
) -> TunnelStream:
    return await agent.open_stream(WebSocketOpen(0, url, headers_of(headers), subprotocols))


async def ack_of(stream: TunnelStream) -> WebSocketAck:
    ack = await stream.wait_reply()
    assert isinstance(ack, WebSocketAck)
    return ack


async def receive_message(stream: TunnelStream) -> tuple[bool, bytes] | WebSocketClose:
    """One whole message (fragments joined) as (binary, payload), or the close."""
    parts = bytearray()
    while True:
        frame = await stream.receive_ws()
        assert frame is not None, "the stream ended without a close"
        if isinstance(frame, WebSocketClose):
            return frame
        assert isinstance(frame, WebSocketMessage)
        parts += frame.data
        if frame.fin:
            return frame.binary, bytes(parts)


class TunnelByteStream(trio.abc.HalfCloseableStream):
    """A Connect stream seen as a trio stream, so an SSLStream can run over it."""

    def __init__(self, stream: TunnelStream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()
