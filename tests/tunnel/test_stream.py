"""TunnelStream over a linked pair: integrity, half-close, reset, flow control, fairness."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from fluidity.protocol import (
    DEFAULT_INITIAL_WINDOW,
    Connect,
    ConnectAck,
    Data,
    ErrorCode,
    Request,
    Response,
    WebSocketAck,
    WebSocketClose,
    WebSocketMessage,
    WebSocketOpen,
)
from fluidity.tunnel import Link, LinkConfig, StreamReset, TunnelStream

from .helpers import (
    Digest,
    Wire,
    decode_frames,
    digest,
    linked_pair,
    payload,
    receive_all,
    send_chunked,
)

MB = 1024 * 1024


async def connect(agent: Link, host: str = "origin", port: int = 443) -> TunnelStream:
    """Open a CONNECT stream and check the server accepted it."""
    stream = await agent.open_stream(Connect(0, host, port))
    reply = await stream.wait_reply()
    assert isinstance(reply, ConnectAck)
    assert reply.success
    return stream


# -- integrity ------------------------------------------------------------------------------


async def test_fifty_concurrent_streams_arrive_intact_and_in_order_both_ways(
    autojump_clock: MockClock,
) -> None:
    count = 50
    rng = random.Random(7)
    sizes = [0, 1, 65535, 65536, 65537, 300_000, 700_000]
    up = {i: payload(i, rng.choice(sizes)) for i in range(count)}
    down = {i: payload(1000 + i, rng.choice(sizes)) for i in range(count)}
    server_got: dict[int, Digest] = {}
    active = 0
    most_active = 0

    async def handler(stream: TunnelStream) -> None:
        nonlocal active, most_active
        assert isinstance(stream.head, Connect)
        i = stream.head.port
        active += 1
        most_active = max(most_active, active)
        await stream.send_reply(ConnectAck(stream.stream_id, 200))

        async def read() -> None:
            server_got[i] = await receive_all(stream, max_bytes=rng.randint(1, 70_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await send_chunked(stream, down[i], random.Random(-i))
        active -= 1

    agent_got: dict[int, Digest] = {}

    async def client(agent_link: Link, i: int) -> None:
        stream = await connect(agent_link, port=i)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_chunked, stream, up[i], random.Random(i))
            agent_got[i] = await receive_all(stream)
        assert stream.finished

    with trio.fail_after(20):
        async with linked_pair(handler) as (agent, server):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(client, agent, i)
            assert agent.statistics().open_streams == 0
            await trio.testing.wait_all_tasks_blocked()
            assert server.statistics().open_streams == 0

    assert server_got == {i: digest(data) for i, data in up.items()}, "agent -> server"
    assert agent_got == {i: digest(data) for i, data in down.items()}, "server -> agent"
    assert most_active > 10, "the streams were meant to run concurrently"


async def test_request_and_response_bodies_larger_than_the_window(
    autojump_clock: MockClock,
) -> None:
    body = payload(1, 4 * MB)
    answer = payload(2, 6 * MB)
    seen: dict[str, object] = {}

    async def handler(stream: TunnelStream) -> None:
        seen["head"] = stream.head
        seen["body"] = await receive_all(stream)
        reply = Response(stream.stream_id, 200, b"OK", ((b"content-type", b"x/y"),))
        await stream.send_reply(reply)
        await stream.send_all(answer)  # one call, many frames and window refills
        await stream.send_eof()

    with trio.fail_after(20):
        async with linked_pair(handler) as (agent, _server):
            head = Request(0, b"POST", b"http://origin/upload", ((b"host", b"origin"),))
            stream = await agent.open_stream(head)
            await stream.send_all(body)
            await stream.send_eof()
            reply = await stream.wait_reply()
            got = await receive_all(stream)

    assert seen["head"] == Request(1, b"POST", b"http://origin/upload", ((b"host", b"origin"),))
    assert seen["body"] == digest(body)
    assert isinstance(reply, Response)
    assert (reply.status, reply.reason, reply.headers) == (200, b"OK", ((b"content-type", b"x/y"),))
    assert got == digest(answer)
    assert stream.finished
    assert stream.error is None


@pytest.mark.parametrize("response_body", [b"", b"hello" * 50_000], ids=["no-body", "body"])
async def test_request_without_body_ends_at_once_on_the_server(
    response_body: bytes, autojump_clock: MockClock
) -> None:
    """Request(end_stream=True): the handler reads b"" at once and its answer arrives whole."""
    server_read: list[bytes] = []

    async def handler(stream: TunnelStream) -> None:
        server_read.append(await stream.receive_some())
        if not response_body:
            await stream.send_reply(Response(stream.stream_id, 204, end_stream=True))
            return
        await stream.send_reply(Response(stream.stream_id, 200))
        await stream.send_all(response_body)
        await stream.send_eof()

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await agent.open_stream(Request(0, b"GET", b"http://origin/", end_stream=True))
            reply = await stream.wait_reply()
            got = await receive_all(stream)
            assert stream.finished
            assert stream.error is None
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"the request already ended")

    assert server_read == [b""]
    assert isinstance(reply, Response)
    assert reply.end_stream == (not response_body)
    assert got == digest(response_body)


# -- half-close -----------------------------------------------------------------------------


async def test_agent_half_close_then_the_server_still_sends(autojump_clock: MockClock) -> None:
    upload = payload(3, 500_000)
    download = payload(4, 2 * MB)
    server_saw: list[Digest] = []

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        server_saw.append(await receive_all(stream))  # to the agent's EOF
        await stream.send_all(download)
        await stream.send_eof()

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await connect(agent)
            await stream.send_all(upload)
            await stream.send_eof()
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"after eof")
            assert await receive_all(stream) == digest(download)
            assert stream.finished

    assert server_saw == [digest(upload)]


async def test_server_half_close_then_the_agent_still_sends(autojump_clock: MockClock) -> None:
    upload = payload(5, 2 * MB)
    download = payload(6, 500_000)
    server_saw: list[Digest] = []
    server_eof_refused: list[bool] = []

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await stream.send_all(download)
        await stream.send_eof()
        try:
            await stream.send_all(b"after eof")
        except trio.ClosedResourceError:
            server_eof_refused.append(True)
        server_saw.append(await receive_all(stream))

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await connect(agent)
            assert await receive_all(stream) == digest(download)  # the server's EOF first
            await stream.send_all(upload)
            await stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            assert stream.finished

    assert server_saw == [digest(upload)]
    assert server_eof_refused == [True]


async def test_handler_that_answers_before_reading_the_whole_body(
    autojump_clock: MockClock,
) -> None:
    """The handler ends with the agent still sending: its full answer arrives, then a Reset."""
    answer = payload(7, 1 * MB)
    agent_side, server_side = trio.testing.memory_stream_pair()
    slow = Wire(server_side, rate=1 * MB)  # the answer's tail is still queued when it returns

    async def handler(stream: TunnelStream) -> None:
        await stream.receive_some(1000)  # a peek at the body is enough to refuse it
        await stream.send_reply(Response(stream.stream_id, 413))
        await stream.send_all(answer)
        await stream.send_eof()

    with trio.fail_after(60):
        async with linked_pair(handler, transports=(agent_side, slow)) as (agent, server):
            stream = await agent.open_stream(Request(0, b"PUT", b"http://origin/big"))
            async with trio.open_nursery() as nursery:

                async def upload_forever() -> None:
                    while True:
                        await stream.send_all(payload(8, 100_000))

                async def upload() -> None:
                    with pytest.raises(StreamReset) as caught:
                        await upload_forever()
                    assert caught.value.code is ErrorCode.CANCEL

                nursery.start_soon(upload)
                reply = await stream.wait_reply()
                assert isinstance(reply, Response)
                assert reply.status == 413
                assert await receive_all(stream) == digest(answer)
            assert agent.error is None
            assert server.error is None


# -- reset ----------------------------------------------------------------------------------


@pytest.mark.parametrize("blocked_in", ["receive_some", "send_all"])
async def test_agent_reset_reaches_the_handler_and_spares_other_streams(
    blocked_in: str, autojump_clock: MockClock
) -> None:
    errors: dict[int, BaseException] = {}
    handler_blocked = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        assert isinstance(stream.head, Connect)
        if stream.head.host == "bystander":
            data = await receive_all(stream)
            await stream.send_all(str(data[0]).encode())
            await stream.send_eof()
            return
        try:
            handler_blocked.set()
            if blocked_in == "receive_some":
                await stream.receive_some()
            else:
                await stream.send_all(
                    payload(0, 4 * DEFAULT_INITIAL_WINDOW)
                )  # the agent never reads
        except StreamReset as exc:
            errors[stream.stream_id] = exc
            with pytest.raises(StreamReset):
                await stream.send_all(b"more")
            with pytest.raises(StreamReset):
                await stream.receive_some()
            raise

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, server):
            bystander = await connect(agent, "bystander")
            await bystander.send_all(payload(1, 300_000))
            victim = await connect(agent, "victim")
            await handler_blocked.wait()
            await trio.testing.wait_all_tasks_blocked()
            victim.reset(ErrorCode.UPSTREAM_ERROR, "client went away")
            with pytest.raises(StreamReset) as local:
                await receive_all(victim)  # what had arrived, then the reset
            assert local.value.by_peer is False
            with pytest.raises(StreamReset):
                await victim.send_all(b"x")
            await trio.testing.wait_all_tasks_blocked()
            # The bystander goes on after the reset.
            await bystander.send_all(payload(2, 300_000))
            await bystander.send_eof()
            assert await receive_all(bystander) == digest(b"600000")
            assert agent.error is None
            assert server.error is None
            assert server.statistics().open_streams == 0

    (error,) = errors.values()
    assert isinstance(error, StreamReset)
    assert error.code is ErrorCode.UPSTREAM_ERROR
    assert error.by_peer
    assert error.message == "client went away"


async def test_server_reset_reaches_the_agent_receive_and_send(autojump_clock: MockClock) -> None:
    partial_read = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await stream.send_all(b"partial")
        assert isinstance(stream.head, Connect)
        if stream.head.host == "victim":
            await partial_read.wait()
            stream.reset(ErrorCode.UPSTREAM_ERROR, "origin hung up")
            return
        await stream.send_eof()
        await receive_all(stream)

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, server):
            bystander = await connect(agent, "bystander")
            victim = await connect(agent, "victim")
            assert await victim.receive_some() == b"partial"
            partial_read.set()
            with pytest.raises(StreamReset) as caught:
                await victim.receive_some()
            assert caught.value.code is ErrorCode.UPSTREAM_ERROR
            assert caught.value.by_peer
            with pytest.raises(StreamReset):
                await victim.send_all(b"x")
            # A sender blocked on credit is woken too, and the other stream is untouched.
            assert await receive_all(bystander) == digest(b"partial")
            await bystander.send_all(b"bye")
            await bystander.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            assert bystander.finished
            assert bystander.error is None
            assert agent.error is None
            assert server.statistics().open_streams == 0


async def test_cancel_on_failure_stops_work_that_reads_nothing(
    autojump_clock: MockClock,
) -> None:
    """A handler busy elsewhere (a slow origin) learns the agent gave up on its stream."""
    outcome: list[str] = []

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        with trio.CancelScope() as scope:
            stream.cancel_on_failure(scope)
            await trio.sleep_forever()
        outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")
        assert isinstance(stream.error, StreamReset)
        assert stream.error.code is ErrorCode.CANCEL

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await connect(agent)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == []
            stream.reset(ErrorCode.CANCEL, "client went away")
            await trio.testing.wait_all_tasks_blocked()
    assert outcome == ["cancelled"]


async def test_cancel_on_failure_of_a_failed_stream_cancels_at_once(
    autojump_clock: MockClock,
) -> None:
    outcome: list[bool] = []

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        with pytest.raises(StreamReset):
            await stream.receive_some()  # the agent resets: the stream has failed
        with trio.CancelScope() as scope:
            stream.cancel_on_failure(scope)
            await trio.sleep_forever()
        outcome.append(scope.cancelled_caught)

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await connect(agent)
            await trio.testing.wait_all_tasks_blocked()
            stream.reset(ErrorCode.CANCEL, "client went away")
            await trio.testing.wait_all_tasks_blocked()
    assert outcome == [True]


async def test_reset_wakes_a_sender_waiting_for_credit(autojump_clock: MockClock) -> None:
    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await trio.sleep_forever()  # never reads

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await connect(agent)
            sender_failed: list[StreamReset] = []

            async def sender() -> None:
                with pytest.raises(StreamReset) as caught:
                    await stream.send_all(payload(0, 2 * DEFAULT_INITIAL_WINDOW))
                sender_failed.append(caught.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                assert not sender_failed, "the sender should be waiting for credit"
                stream.reset()
            assert [e.code for e in sender_failed] == [ErrorCode.CANCEL]


async def test_reset_drops_the_streams_queued_unsent_data(autojump_clock: MockClock) -> None:
    sent = payload(8, 2 * MB)
    received: dict[int, int] = {}
    handler_error: list[StreamReset] = []

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        received[stream.stream_id] = 0
        try:
            while data := await stream.receive_some():
                received[stream.stream_id] += len(data)
        except StreamReset as exc:
            handler_error.append(exc)

    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side)
    config = LinkConfig(write_batch=64 * 1024, stream_send_buffer=128 * 1024)
    with trio.fail_after(10):
        async with linked_pair(handler, config, transports=(wire, server_side)) as (agent, _):
            stream = await connect(agent)
            wire.hold()  # the writer gets stuck on its next batch
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    with pytest.raises(StreamReset):
                        await stream.send_all(sent)

                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                assert stream.queued > 0, "data should be waiting in the writer's queue"
                stream.reset(ErrorCode.CANCEL, "dropped")
                assert stream.queued == 0
                assert agent.statistics().queued_bytes == 0
                wire.release()
            await trio.testing.wait_all_tasks_blocked()
            # The link survived and keeps working.
            other = await connect(agent)
            await other.send_all(b"still here")
            await other.send_eof()
            await trio.testing.wait_all_tasks_blocked()

    assert [(e.code, e.message) for e in handler_error] == [(ErrorCode.CANCEL, "dropped")]
    # Only the batch the writer already held went out; the queued bytes never did.
    assert received == {stream.stream_id: 64 * 1024, other.stream_id: len(b"still here")}


async def test_reset_before_the_opening_frame_is_written_keeps_the_link(
    autojump_clock: MockClock,
) -> None:
    """A stream reset while its opening frame still waits in the queue must not confuse the peer."""
    opened: list[int] = []

    async def handler(stream: TunnelStream) -> None:
        opened.append(stream.stream_id)
        assert isinstance(stream.head, Connect)
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        data = await receive_all(stream)
        await stream.send_all(str(data[0]).encode())
        await stream.send_eof()

    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side)
    with trio.fail_after(10):
        async with linked_pair(handler, transports=(wire, server_side)) as (agent, server):
            busy = await connect(agent)
            wire.hold()
            await busy.send_all(b"x" * 1000)  # the writer takes this and gets stuck
            await trio.testing.wait_all_tasks_blocked()
            doomed = await agent.open_stream(Request(0, b"POST", b"http://origin/"))
            await doomed.send_all(b"body that never goes out")
            doomed.reset()
            wire.release()
            await busy.send_eof()
            assert await receive_all(busy) == digest(b"1000")
            after = await connect(agent)
            await after.send_eof()
            assert await receive_all(after) == digest(b"0")
            assert agent.error is None
            assert server.error is None

    assert doomed.stream_id not in opened


# -- flow control and fairness --------------------------------------------------------------


async def test_a_stalled_reader_stalls_only_its_own_stream(autojump_clock: MockClock) -> None:
    window = DEFAULT_INITIAL_WINDOW
    config = LinkConfig(stream_send_buffer=128 * 1024)
    resume = trio.Event()
    stalled: dict[str, TunnelStream] = {}
    server_got: dict[int, Digest] = {}

    async def handler(stream: TunnelStream) -> None:
        assert isinstance(stream.head, Connect)
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        if stream.head.host == "stalled":
            stalled["server"] = stream
            await resume.wait()
        server_got[stream.head.port] = await receive_all(stream)
        await stream.send_all(payload(stream.head.port, 1 * MB))
        await stream.send_eof()

    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(agent_side, rate=20 * MB)  # slow enough that the writer's queue fills up
    most_queued = 0
    most_buffered = 0
    links: list[Link] = []

    def probe() -> None:
        nonlocal most_queued, most_buffered
        for stream in [s for link in links for s in link.streams.values()]:
            most_queued = max(most_queued, stream.queued)
        if "server" in stalled:
            most_buffered = max(most_buffered, stalled["server"].buffered)

    wire.probes.append(probe)
    uploads = {i: payload(100 + i, 1 * MB) for i in range(9)}
    with trio.fail_after(60):
        async with linked_pair(handler, config, transports=(wire, server_side)) as (
            agent,
            server,
        ):
            links.append(agent)
            stalled_stream = await connect(agent, "stalled", 0)
            big = payload(99, 4 * MB)
            upload_done = trio.Event()

            async def stalled_upload() -> None:
                await send_chunked(stalled_stream, big, random.Random(0))
                upload_done.set()

            async def other(i: int) -> None:
                stream = await connect(agent, "other", i)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_chunked, stream, uploads[i], random.Random(i))
                    assert await receive_all(stream) == digest(payload(i, 1 * MB))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stalled_upload)
                async with trio.open_nursery() as others:
                    for i in range(1, 9):
                        others.start_soon(other, i)
                # Every other stream completed while the stalled one stayed stuck.
                await trio.testing.wait_all_tasks_blocked()
                assert not upload_done.is_set()
                assert stalled["server"].buffered == window
                assert server.statistics().buffered_bytes == window
                assert stalled_stream.queued == 0
                resume.set()
            assert await receive_all(stalled_stream) == digest(payload(0, 1 * MB))

    assert server_got == {0: digest(big)} | {i: digest(uploads[i]) for i in range(1, 9)}
    assert 0 < most_queued <= config.stream_send_buffer
    assert most_buffered == window


@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest.mark.parametrize(
    "config",
    # With one-frame batches the writer cannot hide a bulk stream's whole share in one write:
    # the small request must get its turn from the order in which streams are served.
    [LinkConfig(), LinkConfig(write_batch=1)],
    ids=["default-batches", "one-frame-batches"],
)
async def test_a_small_request_overtakes_a_bulk_transfer(
    direction: str, config: LinkConfig, autojump_clock: MockClock
) -> None:
    bulk_size = 50 * MB
    rate = 10 * MB  # the bulk transfer takes about 5 (virtual) seconds
    chunk = payload(0, MB)
    progress = 0
    bulk_started = trio.Event()
    bulk_finished = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        nonlocal progress
        if isinstance(stream.head, Request):
            await stream.send_reply(Response(stream.stream_id, 200))
            await stream.send_all(b"small answer")
            await stream.send_eof()
            return
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        if direction == "upload":
            while data := await stream.receive_some():
                progress += len(data)
                if progress >= 5 * MB:
                    bulk_started.set()
            bulk_finished.set()
            await stream.send_eof()
        else:
            for _ in range(bulk_size // MB):
                await stream.send_all(chunk)
            await stream.send_eof()

    agent_side, server_side = trio.testing.memory_stream_pair()
    if direction == "upload":
        transports = (Wire(agent_side, rate=rate), server_side)
    else:
        transports = (agent_side, Wire(server_side, rate=rate))
    with trio.fail_after(120):
        async with linked_pair(handler, config, config, transports) as (agent, _server):
            bulk = await connect(agent)

            async def run_bulk() -> None:
                nonlocal progress
                if direction == "upload":
                    for _ in range(bulk_size // MB):
                        await bulk.send_all(chunk)
                    await bulk.send_eof()
                    await receive_all(bulk)
                else:
                    await bulk.send_eof()
                    while data := await bulk.receive_some():
                        progress += len(data)
                        if progress >= 5 * MB:
                            bulk_started.set()
                    bulk_finished.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_bulk)
                await bulk_started.wait()
                started = trio.current_time()
                small = await agent.open_stream(Request(0, b"GET", b"http://x/", end_stream=True))
                await small.wait_reply()
                assert await receive_all(small) == digest(b"small answer")
                latency = trio.current_time() - started
                assert not bulk_finished.is_set(), "the small request waited for the bulk"
                assert progress < bulk_size // 2
            assert progress == bulk_size

    assert latency < 0.5, f"the small request took {latency:.2f} s behind the bulk transfer"


# -- WebSocket ------------------------------------------------------------------------------


async def test_websocket_messages_fragments_and_close(autojump_clock: MockClock) -> None:
    big = payload(9, 700_000)

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(WebSocketAck(stream.stream_id, 101, "chat"))
        # Echo every fragment back as it comes, then answer the close.
        while True:
            message = await stream.receive_ws()
            if isinstance(message, WebSocketMessage):
                await stream.send_ws(message.data, binary=message.binary, fin=message.fin)
            else:
                assert isinstance(message, WebSocketClose)
                await stream.send_ws_close(message.code, "bye")
                return

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await agent.open_stream(WebSocketOpen(0, "ws://origin/", (), ("chat",)))
            reply = await stream.wait_reply()
            assert isinstance(reply, WebSocketAck)
            assert reply.subprotocol == "chat"
            received: list[WebSocketMessage | WebSocketClose] = []

            async def read() -> None:
                while (message := await stream.receive_ws()) is not None:
                    received.append(message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await stream.send_ws(b"", binary=False)
                await stream.send_ws(big, binary=True)
                await stream.send_ws_close(1000, "done")
            assert stream.finished

    texts = [m for m in received if isinstance(m, WebSocketMessage) and not m.binary]
    assert [(m.data, m.fin) for m in texts] == [(b"", True)]
    fragments = [m for m in received if isinstance(m, WebSocketMessage) and m.binary]
    assert len(fragments) > 1
    assert [m.fin for m in fragments] == [False] * (len(fragments) - 1) + [True]
    assert digest(b"".join(m.data for m in fragments)) == digest(big)
    assert received[-1] == WebSocketClose(stream.stream_id, 1000, "bye")


async def test_receive_nowait_hands_out_only_what_already_arrived(
    autojump_clock: MockClock,
) -> None:
    release = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await stream.send_all(b"first")
        await stream.send_all(b"second")
        await release.wait()
        await stream.send_eof()
        assert await stream.receive_some() == b""

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await connect(agent)
            await stream.wait_reply()
            await trio.testing.wait_all_tasks_blocked()
            assert stream.receive_nowait() == b"first"
            assert stream.receive_nowait() == b"second"
            assert stream.receive_nowait() is None  # nothing more yet: it would wait
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert stream.receive_nowait() == b""  # the end, without waiting
            await stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            assert stream.finished


@pytest.mark.parametrize("flushed_first", [False, True])
async def test_the_end_of_a_body_rides_on_its_last_unsent_data_frame(
    autojump_clock: MockClock, flushed_first: bool
) -> None:
    """send_all then send_eof is one frame when the Data frame was still queued, else two."""
    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(server_side, record=True)
    go = trio.Event()
    send_end = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await go.wait()
        await stream.send_all(b"first")  # the writer takes it (and, held, sticks there)
        await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(b"the body")
        await trio.testing.wait_all_tasks_blocked()
        await send_end.wait()
        await stream.send_eof()
        assert await stream.receive_some() == b""

    with trio.fail_after(10):
        async with linked_pair(handler, transports=(agent_side, wire)) as (agent, _server):
            stream = await connect(agent)
            await stream.wait_reply()
            if not flushed_first:
                wire.hold()
            go.set()
            await trio.testing.wait_all_tasks_blocked()
            send_end.set()
            await trio.testing.wait_all_tasks_blocked()
            wire.release()
            assert await receive_all(stream) == digest(b"firstthe body")
            await stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            assert stream.finished
    assert wire.sent is not None
    frames = [(f.end_stream, f.data) for f in decode_frames(wire.sent) if isinstance(f, Data)]
    if flushed_first:
        assert frames == [(False, b"first"), (False, b"the body"), (True, b"")]
    else:
        assert frames == [(False, b"first"), (True, b"the body")]


async def test_send_last_is_one_data_frame_with_the_end(autojump_clock: MockClock) -> None:
    """The caller knows the piece is the last: body and end go as one frame, even when the
    writer has already flushed everything before it."""
    agent_side, server_side = trio.testing.memory_stream_pair()
    wire = Wire(server_side, record=True)

    async def handler(stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await stream.send_all(b"first")
        await trio.testing.wait_all_tasks_blocked()  # "first" is written on its own
        await stream.send_last(b"the body")
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"more")
        assert await stream.receive_some() == b""

    with trio.fail_after(10):
        async with linked_pair(handler, transports=(agent_side, wire)) as (agent, _server):
            stream = await connect(agent)
            await stream.wait_reply()
            assert await receive_all(stream) == digest(b"firstthe body")
            await stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            assert stream.finished
    assert wire.sent is not None
    frames = [(f.end_stream, f.data) for f in decode_frames(wire.sent) if isinstance(f, Data)]
    assert frames == [(False, b"first"), (True, b"the body")]
