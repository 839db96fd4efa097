"""The link over real loopback TCP and TLS: Nagle off, large TLS writes for bulk data."""

from __future__ import annotations

import socket
import ssl

import trio

from fluidity.protocol import Request, Response
from fluidity.tunnel import TunnelStream

from .helpers import linked_pair

MIB = 1024 * 1024


class Counting(trio.abc.Stream):
    """A transport that counts the writes TLS hands it (ciphertext, as it goes to the kernel)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.writes: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def download(stream: TunnelStream) -> None:
    await stream.send_reply(Response(stream.stream_id, 200, b"OK", (), False))
    chunk = bytes(64 * 1024)
    for _ in range(8 * MIB // len(chunk)):
        await stream.send_all(chunk)
    await stream.send_eof()


async def test_over_real_tcp_and_tls_nagle_is_off_and_bulk_writes_are_large(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    agent_ctx, server_ctx = tls_contexts
    with trio.fail_after(30):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        agent_tcp = await trio.open_tcp_stream("127.0.0.1", port)
        server_tcp = await listeners[0].accept()
        await listeners[0].aclose()
        for tcp in (agent_tcp, server_tcp):
            assert tcp.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        counted = Counting(server_tcp)
        agent_tls = trio.SSLStream(agent_tcp, agent_ctx, server_hostname="server.fluidity.test")
        server_tls = trio.SSLStream(counted, server_ctx, server_side=True)
        async with linked_pair(download, transports=(agent_tls, server_tls)) as (agent, _):
            stream = await agent.open_stream(Request(0, b"GET", b"http://origin/", (), True))
            await stream.wait_reply()
            received = 0
            while data := await stream.receive_some():
                received += len(data)
            assert received == 8 * MIB
    # 8 MiB went out in writes of full TLS records, batched: not one small write per frame.
    bulk = [n for n in counted.writes if n > 1024]
    assert sum(bulk) >= 8 * MIB
    assert sum(bulk) / len(bulk) >= 64 * 1024
