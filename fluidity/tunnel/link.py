"""The multiplexer: runs a protocol `Connection` over any `trio.abc.Stream`.

One reader task feeds received bytes to the connection and dispatches its events to streams
without ever blocking; one writer task drains a FIFO of frames into large `send_all` calls.
Each stream may have at most `stream_send_buffer` bytes in that FIFO and the link at most
`link_send_buffer`, so a bulk transfer can sit at most that far ahead of an interactive
request: streams take turns in batches. A relay reading a socket for a stream reserves its room
in the FIFO before it reads (`TunnelStream.send_from`), so reads in progress count against the
same bounds: a thousand tunnels behind a busy link leave their bytes in their sockets, not in
reads waiting for room. Frames the protocol answers by itself (Pong, refused
streams) are bounded too: past `max_control_backlog` unsent bytes the reader stops reading
until the writer catches up, so a peer that sends but never reads cannot grow our memory.
A keepalive task pings the peer (at once after the handshake: the first RTT sample sizes the
receive windows) and declares the link dead when nothing arrives in time.

The link owns all send bookkeeping: the FIFO of `QueuedFrame`s, each stream's queued bytes
(`TunnelStream.queued`, read-only for the stream) and the last unsent Data frame of each stream
(into which the stream's end is folded).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

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
    WindowPolicy,
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
    #: How receive windows grow (max_window) and what they may hold in all (receive_budget).
    policy: WindowPolicy = attrs.field(factory=WindowPolicy)
    handshake_timeout: float = 10.0
    #: Pings on an idle link; with streams open, every third of it.
    keepalive_interval: float = 15.0
    #: Silence that ends an idle link; with streams open, a third of it (a frozen peer costs
    #: waiting requests 15 s, not 45 s).
    keepalive_timeout: float = 45.0
    #: Largest single read from the transport.
    receive_size: int = 256 * 1024
    #: A writer batch stops growing at this many bytes.
    write_batch: int = 256 * 1024
    #: Bytes one stream may have queued for the writer before its sender waits.
    stream_send_buffer: int = 128 * 1024
    #: Bytes all streams together may have queued for the writer.
    link_send_buffer: int = 4 * 1024 * 1024
    #: Unsent bytes of frames the protocol queued by itself (Pong, Reset of refused streams,
    #: WindowUpdate) past which the reader stops reading until the writer has sent them.
    max_control_backlog: int = 256 * 1024
    #: How long a stream opener waits for a free stream slot.
    open_timeout: float = 30.0


@attrs.define(eq=False)
class QueuedFrame:
    """One entry of the writer's FIFO: a frame's buffers, owned by the link."""

    stream: TunnelStream
    buffers: list[bytes]
    #: Payload bytes counted in the stream's (and the link's) queued bytes.
    size: int
    #: The Data message while this is the stream's last unsent Data frame (its end may be
    #: folded in by re-encoding it), else None.
    data: Data | None = None


@attrs.frozen
class LinkStatistics:
    open_streams: int
    queued_bytes: int
    #: Room in the queue reserved by reads in progress (`TunnelStream.send_from`).
    reserved_bytes: int
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
        self.conn = Connection(role, config.settings, config.policy)
        self._handler = handler
        self._nursery: trio.Nursery | None = None
        self.streams: dict[int, TunnelStream] = {}
        #: Frames for the writer, in order.
        self._queue: deque[QueuedFrame] = deque()
        #: Payload bytes in `_queue`.
        self._queued = 0
        #: Room in `_queue` reserved by reads in progress (`TunnelStream.send_from`).
        self._reserved = 0
        #: Each stream's last Data frame while it is still in `_queue`.
        self._last_data: dict[TunnelStream, QueuedFrame] = {}
        #: Streams whose sender waits for room in the link's share of the queue.
        #: In arrival order (a dict as an ordered set): woken a queue share at a time, so a
        #: thousand waiting streams are not all woken to find the room taken again.
        self._room_waiters: dict[TunnelStream, None] = {}
        #: Control frames (protocol replies, Resets, pings, GoAway), sent before `_queue`.
        self._urgent: list[bytes] = []
        self._urgent_bytes = 0
        self._backlog_lot = trio.lowlevel.ParkingLot()
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
        self._ping_sent_at: float | None = None
        self._ping_opaque = 0
        self._hello_sent_at: float | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def peer_name(self) -> str:
        return self.conn.peer_name

    @property
    def is_open(self) -> bool:
        return not self._closing.is_set()

    @property
    def rtt(self) -> float | None:
        """The smoothed round-trip time in seconds (from the handshake and the pings)."""
        return self.conn.rtt

    @property
    def draining(self) -> bool:
        """True once either side sent GoAway: no new streams, open ones finish."""
        return self.conn.goaway_received is not None or self.conn.goaway_sent is not None

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            open_streams=len(self.streams),
            queued_bytes=self._queued,
            reserved_bytes=self._reserved,
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
        self._fail(error or LinkClosed("link closed"), ErrorCode.NO_ERROR)

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
        item = QueuedFrame(stream, frames if frames is not None else self.conn.send(message), size)
        self._queue.append(item)
        if size:
            stream.queued += size
            self._queued += size
        previous = self._last_data.pop(stream, None)
        if previous is not None:
            previous.data = None  # no longer the last: the end cannot be folded into it
        if type(message) is Data:
            item.data = message
            self._last_data[stream] = item
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
        item = self._last_data.pop(stream, None)
        if item is not None:
            assert item.data is not None
            self.conn.record(end)
            item.buffers = encode(Data(item.data.stream_id, True, item.data.data))
            item.data = None
        else:
            self._queue.append(QueuedFrame(stream, self.conn.send(end), 0))
            self._wake_writer()
        self._after_send(stream)

    def _send_room(self, stream: TunnelStream) -> int:
        """Bytes `stream` may queue now: its own share, and the link's (0: wait)."""
        room = self.config.stream_send_buffer - stream.queued - stream.reserved
        link_room = self.config.link_send_buffer - self._queued - self._reserved
        if link_room <= 0:
            self._room_waiters[stream] = None  # the writer wakes it when the queue drains
            return 0
        return min(room, link_room)

    def _contended(self, size: int) -> bool:
        """Whether a read of `size` bytes that may wait for its source must not reserve room.

        Such a read holds its room while its source is idle, so it is made only while the link
        is uncontended: nobody waits for room, and such reads stay under half the queue, so
        idle sources can never hold the room the other streams need.
        """
        return bool(self._room_waiters) or (
            2 * (self._queued + self._reserved + size) > self.config.link_send_buffer
        )

    def _reserve(self, stream: TunnelStream, size: int) -> None:
        """Hold `size` bytes of room in the queue for a read in progress."""
        stream.reserved += size
        self._reserved += size

    def _release(self, stream: TunnelStream, size: int, used: int) -> None:
        """End a reservation of `size` bytes, of which the read queued `used`."""
        stream.reserved -= size
        self._reserved -= size
        if used < size and self._room_waiters:
            # The read came back short (or empty): the room it leaves is free for others.
            self._wake_room_waiters(-(-(size - used) // self.config.stream_send_buffer))

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
            self._queue.append(QueuedFrame(stream, self.conn.send(reset), 0))
            self._wake_writer()
        else:
            self._drop_queued(stream)
            self._send_control(reset)
        self._after_send(stream)

    def _drop_queued(self, stream: TunnelStream) -> None:
        if self._queue:
            self._queue = deque(item for item in self._queue if item.stream is not stream)
            self._queued -= stream.queued
        stream.queued = 0
        self._last_data.pop(stream, None)
        self._room_waiters.pop(stream, None)

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if not self._closing.is_set():
            self.conn.acknowledge_received_data(stream_id, size, trio.current_time())
            if self.conn.has_data_to_send:  # a WindowUpdate is due (not at every read)
                self._wake_writer()

    def _send_control(self, message: Message) -> None:
        self._take_control(self.conn.send(message))
        self._wake_writer()

    def _take_control(self, frames: list[bytes]) -> None:
        self._urgent.extend(frames)
        self._urgent_bytes += sum(map(len, frames))

    def _after_send(self, stream: TunnelStream) -> None:
        if stream.stream_id not in self.conn.streams:
            self._forget(stream)

    def _forget(self, stream: TunnelStream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self._slots_lot.unpark_all()
            if not self.streams and self.conn.goaway_received is not None:
                # The peer is going away and our last stream is done: nothing left to wait for.
                reason = self.conn.goaway_received.reason
                self._fail(LinkClosed(f"the peer is going away: {reason}"))

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
                    self._hello_sent_at = trio.current_time()
                    self._wake_writer()
                with trio.move_on_after(self.config.handshake_timeout):
                    await self._handshake_done.wait()
                if not self._handshake_done.is_set():
                    self._fail(LinkClosed("handshake timed out"))
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
        backlog = self.config.max_control_backlog
        while True:
            while self._urgent_bytes > backlog and not self._closing.is_set():
                # The peer makes us answer (Pong, refused streams) faster than it reads the
                # answers: stop reading until the writer has sent them. A peer that never
                # reads goes silent for us and the keepalive ends the link.
                await self._backlog_lot.park()
            try:
                data = await self.transport.receive_some(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(LinkClosed(f"link lost: {exc.__cause__ or exc}"))
                return
            if not data:
                self._fail(LinkClosed("the peer closed the link"))
                return
            self._last_received = trio.current_time()
            self.bytes_received += len(data)
            try:
                conn.receive_data(data)
                del data  # copied into the decoder: not kept while the next read is awaited
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
                self._take_control(conn.data_to_send())  # the GoAway the protocol queued
                self._fail(LinkClosed(f"protocol error: {exc}"))
                return
            if conn.has_data_to_send:  # Pongs, WindowUpdates, Resets: else nothing to wake for
                self._take_control(conn.data_to_send())
                self._wake_writer()

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, StreamMessage):
            self._dispatch_stream(message)
        elif isinstance(message, HelloAck):
            if self._hello_sent_at is not None:
                self.conn.note_rtt(trio.current_time() - self._hello_sent_at)
            self._handshake_done.set()
        elif isinstance(message, Hello):
            self._handshake_done.set()
        elif isinstance(message, Pong):
            if self._ping_sent_at is not None and message.opaque == self._ping_opaque:
                self.conn.note_rtt(trio.current_time() - self._ping_sent_at)
                self._ping_sent_at = None
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
            self._fail(LinkClosed(f"peer closed the link: {goaway.reason}"))
        elif not self.streams:
            self._fail(LinkClosed(f"the peer is going away: {goaway.reason}"))

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
        while True:
            while True:
                if pending := self.conn.data_to_send():
                    self._take_control(pending)
                if self._urgent or self._queue:
                    break
                if self._closing.is_set():
                    self._flushed.set()
                    return
                if self._room_waiters:  # the queue is empty: room for every waiter
                    self._wake_room_waiters(len(self._room_waiters))
                    continue
                await self._writer_lot.park()
            payload = self._next_batch()
            try:
                await self.transport.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(LinkClosed(f"link lost: {exc.__cause__ or exc}"))
                self._flushed.set()
                return
            self.bytes_sent += len(payload)
            del payload  # not kept while the writer waits for more

    def _next_batch(self) -> bytes:
        """Take the urgent frames, then queued ones up to `write_batch` bytes, as one write.

        The frames are released as soon as they are joined (a method of its own, so no local
        keeps the last of them alive while the batch is written and the writer waits).
        """
        batch, self._urgent = self._urgent, []
        self._urgent_bytes = 0
        size = 0
        queue = self._queue
        last_data = self._last_data
        batch_limit = self.config.write_batch
        while queue and size < batch_limit:
            item = queue.popleft()
            batch.extend(item.buffers)
            stream = item.stream
            if item.data is not None:
                del last_data[stream]
            if self._unsent_heads:
                self._unsent_heads.discard(stream.stream_id)
            n = item.size
            if n:
                size += n
                stream.queued -= n
                stream._wake_senders()
        self._queued -= size
        if self._room_waiters:
            room = self.config.link_send_buffer - self._queued - self._reserved
            self._wake_room_waiters(-(-room // self.config.stream_send_buffer))
        if self._backlog_lot:
            self._backlog_lot.unpark_all()
        return b"".join(batch)

    def _wake_room_waiters(self, count: int) -> None:
        """Wake the `count` streams that waited longest for room in the link's queue."""
        waiters = self._room_waiters
        for _ in range(min(count, len(waiters))):
            stream = next(iter(waiters))
            del waiters[stream]
            stream._wake_senders()

    async def _keepalive(self) -> None:
        """Ping at once (the first RTT sample), then every interval; end a silent link.

        With streams open the interval and the timeout are a third as long: requests are
        waiting, and a frozen peer should cost them seconds, not the idle timeout.
        """
        last_ping = -float("inf")
        while True:
            now = trio.current_time()
            busy = bool(self.streams)
            interval = self.config.keepalive_interval / (3 if busy else 1)
            timeout = self.config.keepalive_timeout / (3 if busy else 1)
            deadline = self._last_received + timeout  # compared as is: no rounding gap
            if now >= deadline:
                silent = now - self._last_received
                self._fail(
                    LinkClosed(f"keepalive timeout: nothing heard for {silent:.0f} s"),
                    ErrorCode.KEEPALIVE_TIMEOUT,
                )
                return
            if now >= last_ping + interval:
                last_ping = now
                self._ping_opaque += 1
                self._ping_sent_at = now
                self._send_control(Ping(self._ping_opaque))
            # Wake for the next ping, the silence deadline, and a link turning busy (times
            # compared exactly as they are computed: a rounding gap would spin this loop).
            wake = min(last_ping + interval, deadline)
            if not busy:
                wake = min(wake, now + self.config.keepalive_interval / 3)
            await trio.sleep_until(wake)

    # -- failure --------------------------------------------------------------------------

    def _fail(self, error: Exception, goaway: ErrorCode | None = None) -> None:
        """End the link with `error`; with `goaway`, tell the peer first, with that code."""
        if self._closing.is_set():
            return
        self.error = error
        conn = self.conn
        if goaway is not None and conn.state is not LinkState.CLOSED and conn.goaway_sent is None:
            reason = str(error)[:200]
            self._take_control(conn.send(GoAway(conn.highest_stream_id, goaway, reason)))
        if goaway is None and conn.state is not LinkState.CLOSED:
            self._flushed.set()
        # Frames of streams that already ended still go out (the tail of a response that
        # finished just before a drain or close); those of the streams failed here do not.
        failing = set(self.streams.values())
        if failing:
            self._queue = deque(item for item in self._queue if item.stream not in failing)
        for stream in failing:
            stream._fail(error)
        self.streams.clear()
        self._closing.set()
        self._handshake_done.set()
        self._slots_lot.unpark_all()
        self._backlog_lot.unpark_all()
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
