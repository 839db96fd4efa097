"""The multiplexer: runs a protocol `Connection` over any `trio.abc.Stream`.

One reader task feeds received bytes to the connection and dispatches its events to streams
without ever blocking; one writer task drains a FIFO of frames into large `send_all` calls.
Each stream may have at most `stream_send_buffer` bytes in that FIFO, so a bulk transfer
can sit at most that far ahead of an interactive request: streams take turns in batches.
A keepalive task pings the peer and declares the link dead when nothing arrives in time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from fluidity.protocol import (
    Connect,
    Connection,
    Data,
    ErrorCode,
    GoAway,
    Hello,
    HelloAck,
    LinkProtocolError,
    LinkState,
    Message,
    Ping,
    Pong,
    Request,
    Reset,
    Role,
    Settings,
    StreamKind,
    StreamMessage,
    StreamProtocolError,
    WebSocketOpen,
    WindowUpdate,
    encode,
)

from .errors import LinkClosed, StreamLimit, StreamReset
from .stream import TunnelStream

log = logging.getLogger(__name__)

Handler = Callable[[TunnelStream], Awaitable[None]]
Opening = Request | Connect | WebSocketOpen
_OPENINGS = (Request, Connect, WebSocketOpen)

_KINDS: dict[type[Message], StreamKind] = {
    Request: StreamKind.REQUEST,
    Connect: StreamKind.CONNECT,
    WebSocketOpen: StreamKind.WEBSOCKET,
}


@attrs.frozen
class LinkConfig:
    """Tuning of one link. Timeouts in seconds."""

    settings: Settings = attrs.field(factory=Settings)
    handshake_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 45.0
    #: Largest single read from the transport.
    receive_size: int = 256 * 1024
    #: A writer batch stops growing at this many bytes.
    write_batch: int = 256 * 1024
    #: Bytes one stream may have queued for the writer before its sender waits.
    stream_send_buffer: int = 128 * 1024
    #: How long a stream opener waits for a free stream slot.
    open_timeout: float = 30.0


@attrs.frozen
class LinkStatistics:
    open_streams: int
    queued_bytes: int
    buffered_bytes: int
    frames_queued: int
    bytes_sent: int
    bytes_received: int


class Link:
    """A running link. Create with `open_link()`; agents open streams, servers get handlers."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        role: Role,
        config: LinkConfig,
        handler: Handler | None = None,
    ) -> None:
        self.transport = transport
        self.role = role
        self.config = config
        self.conn = Connection(role, config.settings)
        self._handler = handler
        self._nursery: trio.Nursery | None = None
        self.streams: dict[int, TunnelStream] = {}
        #: Frames for the writer: [stream, buffers, payload size] (a list: see _enqueue_end).
        self._queue: deque[list[Any]] = deque()
        self._urgent: list[bytes] = []
        #: Agent streams whose opening frame is still in `_queue` (the peer has not seen them).
        self._unsent_heads: set[int] = set()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._slots_lot = trio.lowlevel.ParkingLot()
        self._handshake_done = trio.Event()
        self._closing = trio.Event()
        self._flushed = trio.Event()
        self._finished = trio.Event()
        self.error: Exception | None = None
        self._last_received = trio.current_time()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.rtt: float | None = None
        self._ping_sent_at: float | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def peer_name(self) -> str:
        return self.conn.peer_name

    @property
    def is_open(self) -> bool:
        return not self._closing.is_set()

    @property
    def draining(self) -> bool:
        """True once either side sent GoAway: no new streams, open ones finish."""
        return self.conn.goaway_received is not None or self.conn.goaway_sent is not None

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            open_streams=len(self.streams),
            queued_bytes=sum(n for _, _, n in self._queue),
            buffered_bytes=sum(s.buffered for s in self.streams.values()),
            frames_queued=len(self._queue),
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
        )

    async def open_stream(self, head: Opening) -> TunnelStream:
        """Agent side: open a stream with `head` (its stream_id is replaced by the next id).

        Waits (up to `open_timeout`) while the peer's stream limit is reached, then raises
        StreamLimit. A head whose frame the peer would refuse for its size raises FrameTooLarge
        and opens nothing: the caller answers that request (431/414), the link goes on.
        """
        if not self._may_open():
            with trio.move_on_after(self.config.open_timeout):
                while not self._may_open():
                    await self._slots_lot.park()
            if not self._may_open():
                limit = len(self.conn.streams)  # the peer's max_streams, all in use
                raise StreamLimit(
                    f"the server's limit of {limit} concurrent streams was still reached "
                    f"after {self.config.open_timeout:g} s"
                )
        self._check_open()
        head = attrs.evolve(head, stream_id=self.conn.next_stream_id())
        frames = self.conn.send(head)  # FrameTooLarge here leaves no trace
        stream = TunnelStream(self, head, _KINDS[type(head)])
        if isinstance(head, Request) and head.end_stream:
            stream._local_ended = True
        self.streams[head.stream_id] = stream
        self._enqueue(stream, head, 0, frames)
        self._unsent_heads.add(head.stream_id)
        await trio.lowlevel.checkpoint_if_cancelled()
        return stream

    def _may_open(self) -> bool:
        """Whether a stream may be opened now; raises if the link will never allow one."""
        self._check_open()
        if self.draining:
            raise LinkClosed("the link is draining (GoAway); open a new link")
        return self.conn.can_open_stream()

    async def wait_closed(self) -> None:
        await self._closing.wait()

    async def drain(self, reason: str = "shutting down") -> None:
        """Graceful close: GoAway, wait for open streams to finish, then close.

        Bound it at the call site (`with trio.move_on_after(grace): await link.drain()`);
        the link is closed however this returns.
        """
        try:
            if self.is_open and self.conn.goaway_sent is None:
                last = self.conn.highest_stream_id
                self._send_control(GoAway(last, ErrorCode.NO_ERROR, reason))
            while self.streams and self.is_open:
                await self._slots_lot.park()
        finally:
            self.close(LinkClosed(f"link closed: {reason}"))
        # Return once the GoAway and the tails of finished streams are written and the
        # transport is closed, so a caller that cancels the link's owner next loses nothing.
        await self._finished.wait()

    def close(self, error: Exception | None = None) -> None:
        """Close now: fail open streams with `error`, flush what is queued (briefly), end."""
        self._fail(error or LinkClosed("link closed"), goaway=True)

    # -- internals used by TunnelStream ---------------------------------------------------

    def _wake_writer(self) -> None:
        if self._writer_lot:  # parked only while it has nothing to write
            self._writer_lot.unpark_all()

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise self.error or LinkClosed("link closed")

    def _enqueue(
        self,
        stream: TunnelStream,
        message: StreamMessage,
        size: int,
        frames: list[bytes] | None = None,
    ) -> None:
        self._check_open()
        entry = [stream, frames if frames is not None else self.conn.send(message), size]
        self._queue.append(entry)
        stream.queued += size
        stream._unsent_data = (entry, message) if type(message) is Data else None
        self._after_send(stream)
        self._wake_writer()

    def _enqueue_end(self, stream: TunnelStream) -> None:
        """End the stream's sending side.

        If its last Data frame is still queued, that frame is re-encoded with end_stream set
        instead of queueing a frame of its own: a response's body and its end arrive as one
        frame, one event at the peer.
        """
        self._check_open()
        end = Data(stream.stream_id, True, b"")  # our side ends here
        unsent = stream._unsent_data
        stream._unsent_data = None
        if unsent is not None:
            self.conn.record(end)
            entry, data = unsent
            entry[1] = encode(Data(data.stream_id, True, data.data))
        else:
            self._queue.append([stream, self.conn.send(end), 0])
            self._wake_writer()
        self._after_send(stream)

    def _reset(self, stream: TunnelStream, reset: Reset) -> None:
        if self._closing.is_set():
            return
        if stream.stream_id in self._unsent_heads:
            # The peer never saw the stream: drop all of it and tell it nothing (a Reset
            # overtaking the opening frame would be a protocol error on the peer's side).
            self._unsent_heads.discard(stream.stream_id)
            self._drop_queued(stream)
            self.conn.send(reset)
        elif stream._local_ended:
            # Our side is complete: the peer gets all of it, then the Reset, in order.
            self._queue.append([stream, self.conn.send(reset), 0])
            self._wake_writer()
        else:
            self._drop_queued(stream)
            self._send_control(reset)
        self._after_send(stream)

    def _drop_queued(self, stream: TunnelStream) -> None:
        if self._queue:
            self._queue = deque(entry for entry in self._queue if entry[0] is not stream)
        stream.queued = 0
        stream._unsent_data = None

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if not self._closing.is_set():
            self.conn.acknowledge_received_data(stream_id, size)
            self._wake_writer()

    def _send_control(self, message: Message) -> None:
        self._urgent.extend(self.conn.send(message))
        self._wake_writer()

    def _after_send(self, stream: TunnelStream) -> None:
        if stream.stream_id not in self.conn.streams:
            self._forget(stream)

    def _forget(self, stream: TunnelStream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self._slots_lot.unpark_all()
            if not self.streams and self.conn.goaway_received is not None:
                # The peer is going away and our last stream is done: nothing left to wait for.
                reason = self.conn.goaway_received.reason
                self._fail(LinkClosed(f"the peer is going away: {reason}"), goaway=False)

    # -- tasks ----------------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
                if self.role is Role.AGENT:
                    self.conn.initiate()
                    self._wake_writer()
                with trio.move_on_after(self.config.handshake_timeout):
                    await self._handshake_done.wait()
                if not self._handshake_done.is_set():
                    self._fail(LinkClosed("handshake timed out"), goaway=False)
                if self.error is None:
                    nursery.start_soon(self._keepalive)
                    task_status.started()
                    started = True
                    await self._closing.wait()
                with trio.move_on_after(1.0):
                    await self._flushed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._closing.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await self.transport.aclose()
            self._finished.set()
        if not started:
            # Raised outside the nursery so the opener sees a plain LinkClosed, not a group.
            raise self.error or LinkClosed("link closed during the handshake")

    async def _reader(self) -> None:
        conn = self.conn
        size = self.config.receive_size
        while True:
            try:
                data = await self.transport.receive_some(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(LinkClosed(f"link lost: {exc.__cause__ or exc}"), goaway=False)
                return
            if not data:
                self._fail(LinkClosed("the peer closed the link"), goaway=False)
                return
            self._last_received = trio.current_time()
            self.bytes_received += len(data)
            try:
                conn.receive_data(data)
                while True:
                    try:
                        message = conn.next_event()
                    except StreamProtocolError as exc:
                        self._on_stream_error(exc)
                        continue
                    if message is None:
                        break
                    self._dispatch(message)
            except LinkProtocolError as exc:
                log.warning("closing link: peer broke the protocol: %s", exc)
                self._fail(LinkClosed(f"protocol error: {exc}"), goaway=True)
                return
            self._wake_writer()

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, StreamMessage):
            self._dispatch_stream(message)
        elif isinstance(message, Hello | HelloAck):
            self._handshake_done.set()
        elif isinstance(message, Pong):
            if self._ping_sent_at is not None:
                self.rtt = trio.current_time() - self._ping_sent_at
        elif isinstance(message, GoAway):
            self._on_goaway(message)
        elif isinstance(message, Ping):
            pass  # the connection queued the Pong

    def _dispatch_stream(self, message: StreamMessage) -> None:
        sid = message.stream_id
        if isinstance(message, _OPENINGS):
            opened = TunnelStream(self, message, _KINDS[type(message)])
            if isinstance(message, Request) and message.end_stream:
                opened._remote_ended = True
            self.streams[sid] = opened
            assert self._nursery is not None
            self._nursery.start_soon(self._run_handler, opened)
            return
        stream = self.streams.get(sid)
        if stream is None:
            return
        if isinstance(message, WindowUpdate):
            stream._wake_senders()
        elif isinstance(message, Reset):
            stream._fail(StreamReset(message.code, message.message))
            self._drop_queued(stream)
            self._forget(stream)
            return
        else:
            stream._deliver(message)
        if sid not in self.conn.streams:
            self._forget(stream)

    def _on_stream_error(self, exc: StreamProtocolError) -> None:
        log.info("stream %d reset: peer broke the protocol: %s", exc.stream_id, exc)
        stream = self.streams.get(exc.stream_id)
        if stream is not None:
            stream._fail(StreamReset(exc.code, str(exc), by_peer=False))
            self._forget(stream)

    def _on_goaway(self, goaway: GoAway) -> None:
        for stream in list(self.streams.values()):
            if stream.stream_id > goaway.last_stream_id:
                stream._fail(StreamReset(ErrorCode.REFUSED_STREAM, "the peer is going away"))
                self._forget(stream)
        self._slots_lot.unpark_all()
        if goaway.code != ErrorCode.NO_ERROR:
            self._fail(LinkClosed(f"peer closed the link: {goaway.reason}"), goaway=False)
        elif not self.streams:
            self._fail(LinkClosed(f"the peer is going away: {goaway.reason}"), goaway=False)

    async def _run_handler(self, stream: TunnelStream) -> None:
        assert self._handler is not None
        try:
            await self._handler(stream)
        except (LinkClosed, StreamReset):
            pass
        except Exception:
            log.exception("handler for stream %d failed", stream.stream_id)
            stream.reset(ErrorCode.INTERNAL_ERROR, "internal error")
        else:
            if not stream.finished:
                stream.reset(ErrorCode.CANCEL, "handler ended before the stream")

    async def _writer(self) -> None:
        batch_limit = self.config.write_batch
        while True:
            while True:
                self._urgent.extend(self.conn.data_to_send())
                if self._urgent or self._queue:
                    break
                if self._closing.is_set():
                    self._flushed.set()
                    return
                await self._writer_lot.park()
            batch, self._urgent = self._urgent, []
            size = 0
            queue = self._queue
            while queue and size < batch_limit:
                item = queue.popleft()
                entry, buffers, n = item
                batch.extend(buffers)
                size += n
                if entry is not None:
                    self._unsent_heads.discard(entry.stream_id)
                    unsent = entry._unsent_data
                    if unsent is not None and unsent[0] is item:
                        entry._unsent_data = None
                    if n:
                        entry.queued -= n
                        entry._wake_senders()
            payload = b"".join(batch)
            try:
                await self.transport.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(LinkClosed(f"link lost: {exc.__cause__ or exc}"), goaway=False)
                self._flushed.set()
                return
            self.bytes_sent += len(payload)

    async def _keepalive(self) -> None:
        interval = self.config.keepalive_interval
        timeout = self.config.keepalive_timeout
        opaque = 0
        while True:
            await trio.sleep(interval)
            silent = trio.current_time() - self._last_received
            if silent >= timeout:
                self._fail(LinkClosed(f"keepalive timeout: nothing heard for {silent:.0f} s"),
                           goaway=True)  # fmt: skip
                return
            opaque += 1
            self._ping_sent_at = trio.current_time()
            self._send_control(Ping(opaque))

    # -- failure --------------------------------------------------------------------------

    def _fail(self, error: Exception, *, goaway: bool) -> None:
        if self._closing.is_set():
            return
        self.error = error
        if goaway and self.conn.state is not LinkState.CLOSED and self.conn.goaway_sent is None:
            code = ErrorCode.NO_ERROR
            if "keepalive" in str(error):
                code = ErrorCode.KEEPALIVE_TIMEOUT
            self._urgent.extend(
                self.conn.send(GoAway(self.conn.highest_stream_id, code, str(error)))
            )
        if not goaway and self.conn.state is not LinkState.CLOSED:
            self._flushed.set()
        # Frames of streams that already ended still go out (the tail of a response that
        # finished just before a drain or close); those of the streams failed here do not.
        failing = set(self.streams)
        self._queue = deque(e for e in self._queue if e[0] is None or e[0].stream_id not in failing)
        for stream in list(self.streams.values()):
            stream._fail(error)
        self.streams.clear()
        self._closing.set()
        self._handshake_done.set()
        self._slots_lot.unpark_all()
        self._wake_writer()


@asynccontextmanager
async def open_link(
    transport: trio.abc.Stream,
    role: Role,
    config: LinkConfig | None = None,
    handler: Handler | None = None,
) -> AsyncIterator[Link]:
    """Run a link over `transport` for the body of the `async with`; handshake first.

    Servers pass `handler`, started in the link's nursery for every stream the peer opens.
    Leaving the block closes the link (GoAway, then the transport).
    """
    if (handler is None) == (role is Role.SERVER):
        raise ValueError("a server link needs a handler; an agent link takes none")
    link = Link(transport, role, config or LinkConfig(), handler)
    failed: LinkClosed | None = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(link._run)
        except LinkClosed as exc:
            failed = exc  # raised below, outside the nursery, so not wrapped in a group
        else:
            try:
                yield link
            finally:
                link.close()
    if failed is not None:
        raise failed


async def serve_link(
    transport: trio.abc.Stream, handler: Handler, config: LinkConfig | None = None
) -> Link:
    """Server side: run a link until it closes, handing each new stream to `handler`."""
    async with open_link(transport, Role.SERVER, config, handler) as link:
        await link.wait_closed()
    return link
