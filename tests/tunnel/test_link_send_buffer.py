"""The link's share of the writer queue: bounded for all streams together, and nobody starves."""

from __future__ import annotations

import trio
import trio.testing
from trio.testing import MockClock

from fluidity.protocol import Request, Response
from fluidity.tunnel import LinkConfig, TunnelStream

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
