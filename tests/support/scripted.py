"""A scripted origin, for what a well-behaved origin never does (drop a request, answer early,
lie about keep-alive): a few lines of script per connection, over plain TCP or TLS.

Each connection's request heads are recorded, and so is whether the script ended (the client
closed, or the script chose to end) and, over TLS, the protocol ALPN chose.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from tests.support.origins import HOST, serve_loopback

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class Peer:
    """The origin's side of one connection: whole request heads in, raw bytes out."""

    def __init__(self, stream: trio.abc.Stream, heads: list[bytes]) -> None:
        self.stream = stream
        self.buffer = b""
        self._heads = heads

    async def read_head(self) -> bytes | None:
        """The next request head (without its body); None if the client closed."""
        while b"\r\n\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self._heads.append(head)
        return head

    async def read_request(self) -> bytes | None:
        """The next request head, its Content-Length body read and dropped."""
        head = await self.read_head()
        if head is None:
            return None
        match = _LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        while len(self.buffer) < length:
            self.buffer += await self.stream.receive_some(65536)
        self.buffer = self.buffer[length:]
        return head

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


Script = Callable[[Peer, int], Awaitable[None]]


@attrs.define
class ScriptedOrigin:
    port: int
    scheme: str = "http"
    connections: int = 0
    #: Request heads seen, per connection.
    heads: list[list[bytes]] = attrs.field(factory=list)
    #: Connections whose script returned (the client closed, or the script chose to end) and
    #: that the origin has closed.
    ended: int = 0
    #: Over TLS: what ALPN chose on each connection (None: the client offered nothing).
    alpn: list[str | None] = attrs.field(factory=list)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{HOST}:{self.port}{path}"

    async def wait_ended(self, n: int) -> None:
        """Wait until `n` connections have ended (the origin closed its side)."""
        while self.ended < n:
            await self._lot.park()


@asynccontextmanager
async def scripted_origin(
    script: Script, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[ScriptedOrigin]:
    """Run `script(peer, index)` for each connection (over TLS with `tls`, a server context)."""
    origin = ScriptedOrigin(port=0, scheme="https" if tls else "http")

    async def handle(tcp: trio.SocketStream) -> None:
        index = origin.connections
        origin.connections += 1
        origin.heads.append([])
        stream: trio.abc.Stream = tcp
        try:
            if tls is not None:
                stream = trio.SSLStream(tcp, tls, server_side=True)
                with trio.fail_after(10):
                    await stream.do_handshake()
                origin.alpn.append(stream.selected_alpn_protocol())
            await script(Peer(stream, origin.heads[index]), index)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(tcp)
            origin.ended += 1
            origin._lot.unpark_all()

    async with serve_loopback(handle) as origin.port:
        yield origin


async def answer_all(peer: Peer, index: int) -> None:
    """Answer every request with OK, keeping the connection open."""
    while await peer.read_request() is not None:
        await peer.send(OK)
