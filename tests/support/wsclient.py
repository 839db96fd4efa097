"""A WebSocket client that goes through an HTTP proxy (absolute-form upgrade), on wsproto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)


class ProxiedWebSocket:
    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def _flush(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) if data else None)

    async def send(self, data: str | bytes) -> None:
        event = TextMessage(data) if isinstance(data, str) else BytesMessage(data)
        await self._flush(event)

    async def send_fragments(self, parts: list[bytes]) -> None:
        for i, part in enumerate(parts):
            await self._flush(BytesMessage(part, message_finished=i == len(parts) - 1))

    async def receive(self) -> str | bytes:
        """The next whole message (fragments joined)."""
        parts: list[str | bytes] = []
        while True:
            event = await self.next_event()
            if isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        return "".join(str(p) for p in parts)
                    return b"".join(bytes(p) for p in parts)
            elif isinstance(event, CloseConnection):
                self.close_code, self.close_reason = event.code, event.reason
                raise ConnectionError(f"closed {event.code} {event.reason}")

    async def ping(self, payload: bytes) -> bytes:
        await self._flush(Ping(payload))
        while True:
            event = await self.next_event()
            if isinstance(event, Pong):
                return bytes(event.payload)

    async def close(self, code: int = 1000, reason: str = "") -> tuple[int, str]:
        """Close and wait for the peer's close; returns its code and reason."""
        await self._flush(CloseConnection(code, reason))
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                return event.code, event.reason or ""

    async def wait_closed(self) -> tuple[int, str]:
        """Wait for the peer to close, answer it; returns its code and reason."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                await self._flush(event.response())
                return event.code, event.reason or ""


@asynccontextmanager
async def proxied_websocket(
    proxy_port: int, url: str, *, subprotocols: list[str] | None = None
) -> AsyncIterator[ProxiedWebSocket]:
    """Open `url` (ws://host:port/path) through the proxy at 127.0.0.1:proxy_port."""
    stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    async with stream:
        ws = WSConnection(ConnectionType.CLIENT)
        host = url.split("/")[2]
        # wsproto writes origin-form targets; a proxy needs the absolute form.
        request = ws.send(Request(host=host, target="/" + url.split("/", 3)[3],
                                  subprotocols=subprotocols or []))  # fmt: skip
        line, rest = request.split(b"\r\n", 1)
        method, _, version = line.split(b" ")
        await stream.send_all(b" ".join([method, url.encode(), version]) + b"\r\n" + rest)
        client = ProxiedWebSocket(stream, ws)
        event = await client.next_event()
        if isinstance(event, RejectConnection):
            raise ConnectionRefusedError(f"upgrade refused with {event.status_code}")
        assert isinstance(event, AcceptConnection), event
        client.subprotocol = event.subprotocol
        yield client
