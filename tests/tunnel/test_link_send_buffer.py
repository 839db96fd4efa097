"""The link's share of the writer queue: bounded for all streams together, and nobody starves."""

from __future__ import annotations

import tracemalloc

import trio
import trio.testing
from trio.testing import MockClock

from fluidity.protocol import Request, Response
from fluidity.tunnel import Link, LinkConfig, TunnelStream

from .helpers import Wire, digest, linked_pair, payload, receive_all

STREAMS = 40
SIZE = 256 * 1024


async def echo_digest(stream: TunnelStream) -> None:
    """Handler: read the upload to its end, answer with its digest."""
    got = await receive_all(stream)
    await stream.send_reply(Response(stream.stream_id, 200, b"OK", (), False))
    await stream.send_all(repr(got).encode())
    await stream.send_eof()


async def test_many_uploads_share_a_bounded_queue_and_all_finish(
    autojump_clock: MockClock,
) -> None:
    config = LinkConfig(
        link_send_buffer=256 * 1024, stream_send_buffer=64 * 1024, write_batch=32 * 1024
    )
    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side, rate=50e6)  # a slow path: the writer's queue fills
    links = []
    most = 0

    def probe() -> None:
        nonlocal most
        if links:
            most = max(most, links[0]._queued)

    wire.probes.append(probe)
    results: dict[int, bytes] = {}

    async def upload(index: int, agent: object) -> None:
        body = payload(index, SIZE)
        stream = await agent.open_stream(Request(0, b"POST", b"http://o/", (), False))  # type: ignore[attr-defined]
        await stream.send_all(body)
        await stream.send_eof()
        await stream.wait_reply()
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        results[index] = data
        assert data == repr(digest(body)).encode()

    with trio.fail_after(60):
        async with linked_pair(echo_digest, config, None, (wire, server_side)) as (agent, _):
            links.append(agent)
            async with trio.open_nursery() as nursery:
                for index in range(STREAMS):
                    nursery.start_soon(upload, index, agent)
    assert len(results) == STREAMS
    assert 0 < most <= config.link_send_buffer
    assert not agent._room_waiters


RELAYS = 48
READ_SIZE = 64 * 1024


def socket_reads_alive() -> int:
    """Bytes of socket reads still alive: what the relays read and the link has not written.

    (tracemalloc's traces, by the frame that allocated them: trio's socket `recv` call.)
    """
    snapshot = tracemalloc.take_snapshot()
    reads = snapshot.filter_traces([tracemalloc.Filter(True, "*/trio/_socket.py")])
    return sum(trace.size for trace in reads.traces)


async def client(sock: trio.SocketStream, body: bytes) -> None:
    """The outside of a tunnel: its upload, then EOF."""
    await sock.send_all(body)
    await sock.send_eof()


async def relay_upload(agent: Link, sock: trio.SocketStream) -> bytes:
    """Relay `sock` into a POST stream with send_from (as the proxy does); the reply's body."""
    stream = await agent.open_stream(Request(0, b"POST", b"http://o/", (), False))
    while await stream.send_from(sock, READ_SIZE):
        pass
    await stream.send_eof()
    await stream.wait_reply()
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_relays_behind_a_slow_link_leave_their_bytes_in_their_sockets() -> None:
    """`send_from` reads a socket only when what it reads can be queued at once.

    48 uploads come from real loopback sockets through a link slower than they are: the bytes
    that wait stay in the sockets' kernel buffers, so what the relays have read and the link
    not yet written stays within the queue and the writer's batch (a relay that read first
    and then waited for room held 64 KiB per stream: 3 MiB here, against a 256 KiB queue).
    """
    config = LinkConfig(
        link_send_buffer=256 * 1024, stream_send_buffer=64 * 1024, write_batch=32 * 1024
    )
    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side, rate=50e6)
    bodies = [payload(index, SIZE) for index in range(RELAYS)]
    results: dict[int, bytes] = {}
    links: list[Link] = []
    most_queued = most_read = 0
    batches = 0

    def probe() -> None:
        nonlocal most_queued, most_read, batches
        link = links[0]
        held = link._queued + link._reserved
        assert held <= config.link_send_buffer
        for stream in link.streams.values():
            assert stream.queued + stream.reserved <= config.stream_send_buffer
        most_queued = max(most_queued, held)
        batches += 1
        if batches % 4 == 0 and tracemalloc.is_tracing():  # a snapshot costs a few ms
            most_read = max(most_read, socket_reads_alive())

    async def relay(index: int, agent: Link, sock: trio.SocketStream) -> None:
        results[index] = await relay_upload(agent, sock)

    with trio.fail_after(30):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        pairs = []
        for _ in range(RELAYS):
            outside = await trio.open_tcp_stream("127.0.0.1", port)
            pairs.append((outside, await listeners[0].accept()))
        await listeners[0].aclose()
        async with linked_pair(echo_digest, config, None, (wire, server_side)) as (agent, _):
            links.append(agent)
            wire.probes.append(probe)
            tracing = tracemalloc.is_tracing()
            if not tracing:
                tracemalloc.start()
            try:
                async with trio.open_nursery() as nursery:
                    for index, (outside, inside) in enumerate(pairs):
                        nursery.start_soon(client, outside, bodies[index])
                        nursery.start_soon(relay, index, agent, inside)
            finally:
                if not tracing:
                    tracemalloc.stop()
        for outside, inside in pairs:
            await outside.aclose()
            await inside.aclose()
    assert results == {i: repr(digest(body)).encode() for i, body in enumerate(bodies)}
    assert most_queued > config.link_send_buffer // 2  # the link was the bottleneck
    assert 0 < most_read <= config.link_send_buffer + config.write_batch + READ_SIZE // 4


async def test_idle_sockets_never_hold_the_room_a_busy_upload_needs() -> None:
    """A read that may wait for its socket holds its room meanwhile, so such reads are made
    only on an uncontended link and reserve at most half its queue: 40 idle tunnels, started
    first, hold no more than that, and a busy upload still goes through."""
    config = LinkConfig(
        link_send_buffer=256 * 1024, stream_send_buffer=64 * 1024, write_batch=32 * 1024
    )
    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side, rate=50e6)
    body = payload(1, 2 * 1024 * 1024)

    async def idle(agent: Link, sock: trio.SocketStream) -> None:
        assert await relay_upload(agent, sock) == repr(digest(b"")).encode()

    with trio.fail_after(30):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        pairs = []
        for _ in range(41):
            outside = await trio.open_tcp_stream("127.0.0.1", port)
            pairs.append((outside, await listeners[0].accept()))
        await listeners[0].aclose()
        (busy_outside, busy_inside), idle_pairs = pairs[0], pairs[1:]
        async with (
            linked_pair(echo_digest, config, None, (wire, server_side)) as (agent, _),
            trio.open_nursery() as nursery,
        ):
            for _, inside in idle_pairs:
                nursery.start_soon(idle, agent, inside)
            await trio.testing.wait_all_tasks_blocked()
            assert 0 < agent._reserved <= config.link_send_buffer // 2
            nursery.start_soon(client, busy_outside, body)
            assert await relay_upload(agent, busy_inside) == repr(digest(body)).encode()
            await trio.testing.wait_all_tasks_blocked()
            assert agent._reserved <= config.link_send_buffer // 2  # the idle ones only
            for outside, _ in idle_pairs:
                await outside.send_eof()
        for outside, inside in pairs:
            await outside.aclose()
            await inside.aclose()
