"""Link lifetime: keepalive, GoAway drain, loss, stream limit, failures, garbage, TLS."""

from __future__ import annotations

import logging
import ssl

import msgpack
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from fluidity.protocol import (
    Connect,
    ConnectAck,
    Connection,
    ErrorCode,
    GoAway,
    HelloAck,
    Request,
    Response,
    Role,
    Settings,
)
from fluidity.tunnel import (
    Link,
    LinkClosed,
    LinkConfig,
    StreamLimit,
    StreamReset,
    TunnelStream,
    open_link,
    serve_link,
)

from .helpers import Wire, decode_frames, digest, linked_pair, payload, receive_all

MB = 1024 * 1024


async def echo(stream: TunnelStream) -> None:
    """Handler: accept a CONNECT and echo everything back until the agent's EOF."""
    await stream.send_reply(ConnectAck(stream.stream_id, 200))
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def connect(agent: Link, host: str = "origin") -> TunnelStream:
    stream = await agent.open_stream(Connect(0, host, 443))
    reply = await stream.wait_reply()
    assert isinstance(reply, ConnectAck)
    assert reply.success
    return stream


# -- keepalive ------------------------------------------------------------------------------


async def test_keepalive_timeout_fails_the_link_and_every_stream(autojump_clock: MockClock) -> None:
    config = LinkConfig(keepalive_interval=5, keepalive_timeout=15)
    handler_errors: list[BaseException] = []

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        try:
            await stream.receive_some()
        except LinkClosed as exc:
            handler_errors.append(exc)
            raise

    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side, record=True)
    with trio.fail_after(120):
        async with linked_pair(handler, config, config, (wire, server_side)) as (agent, server):
            streams = [await connect(agent) for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            went_silent = trio.current_time()
            wire.blackholed = True  # the peer vanishes: no FIN, no RST, nothing
            await agent.wait_closed()
            silent_for = trio.current_time() - went_silent
            await server.wait_closed()

            # Streams are open, so a third of the timeout: found within it, not a ping later.
            busy_timeout = config.keepalive_timeout / 3
            assert busy_timeout - config.keepalive_interval / 3 <= silent_for <= busy_timeout
            for link in (agent, server):
                assert isinstance(link.error, LinkClosed)
                assert "keepalive" in str(link.error)
            for stream in streams:
                with pytest.raises(LinkClosed, match="keepalive"):
                    await stream.receive_some()
                with pytest.raises(LinkClosed, match="keepalive"):
                    await stream.send_all(b"x")
            with pytest.raises(LinkClosed):
                await agent.open_stream(Connect(0, "origin", 443))
            assert agent.statistics().open_streams == 0

    assert len(handler_errors) == 3
    assert all("keepalive" in str(e) for e in handler_errors)
    assert wire.sent is not None
    last = decode_frames(wire.sent)[-1]
    assert isinstance(last, GoAway)
    assert last.code == ErrorCode.KEEPALIVE_TIMEOUT


async def test_a_dead_idle_link_is_found_within_the_keepalive_timeout(
    autojump_clock: MockClock,
) -> None:
    config = LinkConfig(keepalive_interval=5, keepalive_timeout=15)
    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side)
    with trio.fail_after(120):
        async with linked_pair(echo, config, config, (wire, server_side)) as (agent, _server):
            await trio.sleep(7)  # some pings went back and forth
            wire.blackholed = True
            went_silent = trio.current_time()
            await agent.wait_closed()
            silent_for = trio.current_time() - went_silent
    assert "keepalive" in str(agent.error)
    # No streams: the full timeout, counted from the last byte heard (before went_silent).
    assert config.keepalive_timeout - config.keepalive_interval <= silent_for
    assert silent_for <= config.keepalive_timeout


async def test_an_idle_healthy_link_stays_up(autojump_clock: MockClock) -> None:
    config = LinkConfig(keepalive_interval=5, keepalive_timeout=15)
    with trio.fail_after(600):
        async with linked_pair(echo, config, config) as (agent, server):
            idle_stream = await connect(agent)
            await trio.sleep(10 * config.keepalive_timeout)
            assert agent.is_open
            assert server.is_open
            assert agent.rtt is not None, "pings were answered"
            assert server.rtt is not None
            # Both the old stream and a new one still work.
            for stream in (idle_stream, await connect(agent)):
                await stream.send_all(b"still alive")
                await stream.send_eof()
                assert await receive_all(stream) == digest(b"still alive")
            assert agent.error is None
            assert server.error is None


async def test_a_link_without_handshake_times_out(autojump_clock: MockClock) -> None:
    """The peer connects but never says Hello: the opener fails after handshake_timeout."""
    _silent_peer, server_side = trio.testing.memory_stream_pair()
    config = LinkConfig(handshake_timeout=10)
    start = trio.current_time()
    with trio.fail_after(60), pytest.raises(LinkClosed, match="handshake timed out"):
        await serve_link(server_side, echo, config)
    assert trio.current_time() - start == pytest.approx(config.handshake_timeout, abs=1.5)


# -- GoAway drain ---------------------------------------------------------------------------


async def test_drain_lets_open_streams_finish_then_closes(autojump_clock: MockClock) -> None:
    answer = payload(1, 1 * MB)
    release = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await receive_all(stream)
        await release.wait()
        await stream.send_all(answer)
        await stream.send_eof()

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, server):
            streams = [await connect(agent) for _ in range(3)]
            for stream in streams:
                await stream.send_all(b"request")
                await stream.send_eof()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.drain, "deploying")
                await trio.testing.wait_all_tasks_blocked()

                assert agent.draining
                assert server.is_open, "the server waits for its open streams"
                with pytest.raises(LinkClosed, match="draining"):
                    await agent.open_stream(Connect(0, "origin", 443))

                release.set()
                for stream in streams:
                    assert await receive_all(stream) == digest(answer), "a drained answer was cut"
            await server.wait_closed()
            await agent.wait_closed()

    assert isinstance(server.error, LinkClosed)
    assert "deploying" in str(server.error)
    assert isinstance(agent.error, LinkClosed)


async def test_a_stream_opened_across_the_goaway_is_refused(autojump_clock: MockClock) -> None:
    """The agent opened a stream the server had not seen when it sent GoAway: REFUSED_STREAM,
    so the caller knows it may retry on a new link."""
    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side)
    handled: list[int] = []

    async def handler(stream: TunnelStream) -> None:
        handled.append(stream.stream_id)
        await echo(stream)

    with trio.fail_after(60):
        async with linked_pair(handler, transports=(wire, server_side)) as (agent, server):
            wire.hold()  # the Connect below has not reached the server when it drains
            late = await agent.open_stream(Connect(0, "origin", 443))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.drain)
                await trio.testing.wait_all_tasks_blocked()
                assert agent.draining
                wire.release()
            with pytest.raises(StreamReset) as caught:
                await late.wait_reply()
            assert caught.value.code is ErrorCode.REFUSED_STREAM
            await agent.wait_closed()

    assert handled == []
    assert isinstance(agent.error, LinkClosed)
    assert "going away" in str(agent.error)


async def test_a_bounded_drain_closes_with_streams_still_open(autojump_clock: MockClock) -> None:
    server_saw: list[BaseException] = []

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        try:
            await stream.receive_some()  # the agent never ends its side
        except LinkClosed as exc:
            server_saw.append(exc)
            raise

    with trio.fail_after(60):
        async with linked_pair(handler) as (agent, server):
            streams = [await connect(agent) for _ in range(2)]
            start = trio.current_time()
            with trio.move_on_after(5):
                await server.drain()
            assert trio.current_time() - start == pytest.approx(5)
            assert not server.is_open
            await agent.wait_closed()
            for stream in streams:
                with pytest.raises(LinkClosed):
                    await stream.receive_some()
            assert agent.statistics().open_streams == 0

    assert len(server_saw) == 2


# -- abrupt loss ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["agent", "server"])
async def test_losing_the_transport_mid_transfer_fails_every_stream(
    side: str, autojump_clock: MockClock
) -> None:
    agent_side, server_side = trio.testing.memory_stream_pair()
    moved = 0
    enough = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        nonlocal moved
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        while data := await stream.receive_some():
            moved += len(data)
            if moved > 2 * MB:
                enough.set()
            await stream.send_all(data)

    failures: list[BaseException] = []

    async def client(agent: Link, i: int) -> None:
        stream = await connect(agent)
        try:
            async with trio.open_nursery() as nursery:

                async def sink() -> None:
                    while await stream.receive_some():
                        pass

                nursery.start_soon(sink)
                while True:
                    await stream.send_all(payload(i, 100_000))
        except* LinkClosed as group:
            failures.append(group.exceptions[0])

    with trio.fail_after(10):
        async with linked_pair(handler, transports=(agent_side, server_side)) as (agent, server):
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(client, agent, i)
                await enough.wait()
                await (agent_side if side == "agent" else server_side).aclose()
            await agent.wait_closed()
            await server.wait_closed()
            with pytest.raises(LinkClosed):
                await agent.open_stream(Connect(0, "origin", 443))

    assert len(failures) == 5
    assert all(isinstance(e, LinkClosed) for e in failures)
    assert isinstance(agent.error, LinkClosed)
    assert isinstance(server.error, LinkClosed)
    assert agent.statistics().open_streams == 0
    assert server.statistics().open_streams == 0


# -- stream limit ---------------------------------------------------------------------------


async def test_open_stream_waits_for_a_free_slot(autojump_clock: MockClock) -> None:
    server_config = LinkConfig(settings=Settings(max_streams=2))
    with trio.fail_after(10):
        async with linked_pair(echo, server_config=server_config) as (agent, server):
            first = await connect(agent)
            second = await connect(agent)
            third: list[TunnelStream] = []

            async def open_third() -> None:
                third.append(await connect(agent))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_third)
                await trio.testing.wait_all_tasks_blocked()
                assert not third, "the third stream should wait for a slot"
                assert agent.statistics().open_streams == 2
                await first.send_eof()
                assert await receive_all(first) == digest(b"")
            (stream,) = third
            for s in (second, stream):
                await s.send_all(b"ok")
                await s.send_eof()
                assert await receive_all(s) == digest(b"ok")
            assert server.error is None


async def test_open_stream_gives_up_after_open_timeout(autojump_clock: MockClock) -> None:
    server_config = LinkConfig(settings=Settings(max_streams=1))
    agent_config = LinkConfig(open_timeout=7)
    with trio.fail_after(60):
        async with linked_pair(echo, agent_config, server_config) as (agent, _server):
            await connect(agent)
            start = trio.current_time()
            with pytest.raises(StreamLimit, match="limit of 1 concurrent streams"):
                await agent.open_stream(Connect(0, "origin", 443))
            assert trio.current_time() - start == pytest.approx(7)
            assert agent.is_open


# -- failures -------------------------------------------------------------------------------


async def test_a_failing_handler_resets_only_its_stream(
    caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    async def handler(stream: TunnelStream) -> None:
        assert isinstance(stream.head, Connect)
        if stream.head.host == "boom":
            await stream.send_reply(ConnectAck(stream.stream_id, 200))
            raise RuntimeError("handler bug")
        await echo(stream)

    with trio.fail_after(10), caplog.at_level(logging.ERROR, logger="fluidity.tunnel"):
        async with linked_pair(handler) as (agent, server):
            survivor = await connect(agent)
            await survivor.send_all(b"before ")
            doomed = await agent.open_stream(Connect(0, "boom", 443))

            async def reply_then_body() -> bytes:
                await doomed.wait_reply()  # the reset may overtake the reply: both are fine
                return await doomed.receive_some()

            with pytest.raises(StreamReset) as caught:
                await reply_then_body()
            assert caught.value.code is ErrorCode.INTERNAL_ERROR
            assert caught.value.by_peer
            await survivor.send_all(b"after")
            await survivor.send_eof()
            assert await receive_all(survivor) == digest(b"before after")
            fresh = await connect(agent)
            await fresh.send_eof()
            assert await receive_all(fresh) == digest(b"")
            assert agent.error is None
            assert server.error is None

    assert any("handler bug" in r.getMessage() or r.exc_info for r in caplog.records)


async def _raw_server_exchange(garbage: bytes, *, after_handshake: bool) -> tuple[list, object]:
    """Run a server link against a raw peer that sends `garbage`; return (frames, outcome)."""
    raw, server_side = trio.testing.memory_stream_pair()
    outcome: list[object] = []

    async def run_server() -> None:
        try:
            outcome.append(await serve_link(server_side, echo))
        except LinkClosed as exc:
            outcome.append(exc)

    received = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            if after_handshake:
                peer = Connection(Role.AGENT)
                peer.initiate()
                await raw.send_all(b"".join(peer.data_to_send()))
                received += await raw.receive_some()
            await raw.send_all(garbage)
            while data := await raw.receive_some():
                received += data
    return decode_frames(received), outcome[0]


GARBAGE = {
    "undecodable": b"\x00\x00\x00\x03\xc1\xc1\xc1",
    "unknown-kind": len(msgpack.packb([99, 1])).to_bytes(4, "big") + msgpack.packb([99, 1]),
    "oversized": b"\x7f\xff\xff\xff",
    "http": b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n",
}
CODES = {
    "undecodable": ErrorCode.PROTOCOL_ERROR,
    "unknown-kind": ErrorCode.PROTOCOL_ERROR,
    "oversized": ErrorCode.FRAME_SIZE_ERROR,
    "http": ErrorCode.FRAME_SIZE_ERROR,
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_garbage_after_the_handshake_closes_the_link_with_goaway(
    kind: str, autojump_clock: MockClock
) -> None:
    frames, outcome = await _raw_server_exchange(GARBAGE[kind], after_handshake=True)
    assert isinstance(outcome, Link)
    assert isinstance(outcome.error, LinkClosed)
    assert str(outcome.error).startswith("protocol error")
    assert isinstance(frames[0], HelloAck)
    assert isinstance(frames[-1], GoAway)
    assert frames[-1].code == CODES[kind]


async def test_garbage_instead_of_hello_fails_the_opener_with_goaway(
    autojump_clock: MockClock,
) -> None:
    frames, outcome = await _raw_server_exchange(GARBAGE["http"], after_handshake=False)
    assert isinstance(outcome, LinkClosed)
    assert str(outcome).startswith("protocol error")
    assert len(frames) == 1
    assert isinstance(frames[0], GoAway)
    assert frames[0].code == ErrorCode.FRAME_SIZE_ERROR


async def test_open_link_checks_handler_against_role() -> None:
    agent_side, _server_side = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="handler"):
        async with open_link(agent_side, Role.AGENT, handler=echo):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="handler"):
        async with open_link(agent_side, Role.SERVER):
            pass  # pragma: no cover


# -- TLS ------------------------------------------------------------------------------------


async def test_a_request_over_mutual_tls_1_3(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext], autojump_clock: MockClock
) -> None:
    agent_ctx, server_ctx = tls_contexts
    body = payload(2, 1 * MB)
    peer_certs: list[object] = []

    async def handler(stream: TunnelStream) -> None:
        peer_certs.append(server_tls.getpeercert())
        got = await receive_all(stream)
        await stream.send_reply(Response(stream.stream_id, 200))
        await stream.send_all(repr(got).encode())
        await stream.send_eof()

    agent_side, server_side = trio.testing.memory_stream_pair()
    agent_tls = trio.SSLStream(agent_side, agent_ctx, server_hostname="server.fluidity.test")
    server_tls = trio.SSLStream(server_side, server_ctx, server_side=True)
    with trio.fail_after(10):
        async with linked_pair(handler, transports=(agent_tls, server_tls)) as (agent, _server):
            stream = await agent.open_stream(Request(0, b"POST", b"https://origin/"))
            await stream.send_all(body)
            await stream.send_eof()
            reply = await stream.wait_reply()
            assert isinstance(reply, Response)
            assert reply.status == 200
            assert await receive_all(stream) == digest(repr(digest(body)).encode())
            assert agent_tls.version() == "TLSv1.3"

    (cert,) = peer_certs
    assert isinstance(cert, dict)
    assert ("DNS", "agent.fluidity.test") in cert["subjectAltName"]
