"""Peers that make us answer but never read: our memory stays bounded, the link ends."""

from __future__ import annotations

import trio
import trio.testing
from trio.testing import MockClock

from fluidity.protocol import Connect, Connection, ErrorCode, Ping, Role, Settings, encode_bytes
from fluidity.tunnel import Link, LinkClosed, LinkConfig, TunnelStream, open_link

BACKLOG = 4096
READ = 4096


async def never_called(stream: TunnelStream) -> None:
    raise AssertionError("no stream should reach the handler")


async def flood(flood_frame: bytes, count: int, config: LinkConfig) -> tuple[Link, int, int]:
    """A raw agent completes the handshake, then sends `count` frames and never reads again.

    Returns the server link, the most unsent control bytes it ever held, and how many frames
    the peer managed to send before its writes stalled.
    """
    raw, server_side = trio.testing.lockstep_stream_pair()
    links: list[Link] = []
    up = trio.Event()
    most = 0
    sent = 0

    async def serve() -> None:
        try:
            async with open_link(server_side, Role.SERVER, config, never_called) as link:
                links.append(link)
                up.set()
                await link.wait_closed()
        except LinkClosed:
            pass

    async def send_flood() -> None:
        nonlocal sent, most
        for _ in range(count):
            await raw.send_all(flood_frame)
            sent += 1
            most = max(most, links[0]._urgent_bytes)  # the server read it: what is queued?

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        peer = Connection(Role.AGENT, Settings(max_streams=1))
        peer.initiate()
        await raw.send_all(b"".join(peer.data_to_send()))
        await raw.receive_some()  # the HelloAck; nothing is read after this
        await up.wait()
        with trio.move_on_after(5):
            await send_flood()
        await links[0].wait_closed()  # the keepalive ends the link the peer stopped reading
        nursery.cancel_scope.cancel()
    return links[0], most, sent


def config() -> LinkConfig:
    return LinkConfig(
        max_control_backlog=BACKLOG,
        receive_size=READ,
        keepalive_interval=5,
        keepalive_timeout=15,
        settings=Settings(max_streams=1),
    )


async def test_a_ping_flood_that_never_reads_is_bounded_and_ends(autojump_clock: MockClock) -> None:
    with trio.fail_after(120):
        link, most, sent = await flood(encode_bytes(Ping(1)), 200_000, config())
    # One read of 4 KiB of Pings makes at most as many bytes of Pongs: the backlog stops
    # growing one read past its bound, and the peer's writes stall.
    assert most <= BACKLOG + READ + 64
    assert sent < 200_000
    assert isinstance(link.error, LinkClosed)
    assert "keepalive" in str(link.error)


async def test_a_refused_stream_flood_is_bounded(autojump_clock: MockClock) -> None:
    # Stream 1 takes the only slot; every later opening is refused with a Reset.
    frames = b"".join(encode_bytes(Connect(sid, "origin", 443)) for sid in range(1, 40_001, 2))
    with trio.fail_after(120):
        link, most, _ = await flood(frames, 1, config())
    assert most <= BACKLOG + 4 * READ  # a Reset is a little larger than the Connect it answers
    assert link.conn.highest_stream_id < 40_000  # it stopped reading long before the end
    assert link.error is not None
    assert link.conn.goaway_sent is None or link.conn.goaway_sent.code in (
        ErrorCode.KEEPALIVE_TIMEOUT,
        ErrorCode.NO_ERROR,
    )
