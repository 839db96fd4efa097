"""CONNECT tunnels through the proxy, in process over real loopback sockets: what they keep."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from fluidity.protocol import ConnectAck
from fluidity.tunnel import TunnelStream
from tests.agent.support import offline_proxy
from tests.support.memory import large_blocks_left

from ..tunnel.helpers import linked_pair

CHUNK = 64 * 1024


async def echo(stream: TunnelStream) -> None:
    """The server's part: accept the tunnel, echo what comes, keep nothing."""
    await stream.send_reply(ConnectAck(stream.stream_id, 200))
    while data := await stream.receive_some():
        await stream.send_all(data)
        del data
    await stream.send_eof()


async def open_tunnel(port: int) -> trio.SocketStream:
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):
        answer += await client.receive_some(1)
    assert answer.startswith(b"HTTP/1.1 200 ")
    return client


async def test_idle_tunnels_keep_none_of_the_bytes_they_relayed() -> None:
    """16 tunnels each echo 64 KiB, then go quiet: the agent keeps none of it (its relay kept
    the last chunk while it waited for the next one: 64 KiB per idle tunnel)."""
    payload = bytes(CHUNK)
    proxy = offline_proxy()

    async def round_trip(client: trio.SocketStream) -> None:
        await client.send_all(payload)
        echoed = 0
        while echoed < CHUNK:
            echoed += len(await client.receive_some(CHUNK))

    with trio.fail_after(20):
        async with linked_pair(echo) as (link, _), trio.open_nursery() as nursery:
            proxy.tunnel.link = link
            serve = partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1")
            port = (await nursery.start(serve))[0].socket.getsockname()[1]
            clients = [await open_tunnel(port) for _ in range(16)]
            held = await large_blocks_left(partial(round_trip, client) for client in clients)
            for client in clients:
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert sum(trace.size for trace in held) < CHUNK, [str(t.traceback) for t in held]
