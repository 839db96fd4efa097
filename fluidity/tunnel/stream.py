"""One multiplexed stream: the object the agent and server handlers use.

Sending waits for flow-control credit and for room in the stream's share of the link's send
queue, so a writer can never queue more than `stream_send_buffer` bytes. A relay moves a
socket's bytes with `send_from`, which reads only once what it reads can be queued at once:
a relay that read first would hold its read while it waited. Receiving hands out the
payloads the link's reader delivered and returns their credit to the peer as they are consumed,
so a reader that stops reading stalls only its own stream.

Every operation is a cancellation point, but yields to the scheduler only when it waits: a
handler that answers a request (reply, body, end) queues all of it in one go and the link's
writer sends it in one batch. The per-stream queue bound and the window make any task wait
(and so yield) before it can hog the loop.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from fluidity.protocol import (
    ConnectAck,
    Data,
    ErrorCode,
    Message,
    Reset,
    Response,
    StreamKind,
    StreamMessage,
    WebSocketAck,
    WebSocketClose,
    WebSocketMessage,
    flow_size,
)

from .errors import LinkClosed, StreamReset

if TYPE_CHECKING:
    from .link import Link

Reply = Response | ConnectAck | WebSocketAck
Inbound = Data | WebSocketMessage | WebSocketClose
_REPLIES = (Response, ConnectAck, WebSocketAck)
_PAYLOADS = (Data, WebSocketMessage)


class TunnelStream:
    """A stream of a Link. Byte streams use send_all/receive_some; WebSockets send/receive_ws."""

    def __init__(self, link: Link, head: StreamMessage, kind: StreamKind) -> None:
        self._link = link
        self.stream_id = head.stream_id
        self.head = head
        self.kind = kind
        self.reply: Reply | None = None
        self._inbox: deque[Inbound] = deque()
        self._partial: memoryview | None = None
        #: Bytes queued in the link's writer for this stream and not yet written (kept by
        #: the link; read here for the stream's share of the queue).
        self.queued = 0
        #: Room in that queue held for a `send_from` read in progress (kept by the link too).
        self.reserved = 0
        #: Whether the last send was left waiting for credit or queue room (still set if that
        #: wait was cancelled): the peer, not the source, held it up.
        self.send_blocked = False
        #: Payload bytes received and not yet handed to the application.
        self.buffered = 0
        #: Payload bytes sent and received so far (bodies, tunnel bytes, WebSocket message
        #: data; not heads): what the metrics and the access log count per stream.
        self.sent_bytes = 0
        self.received_bytes = 0
        self._remote_ended = False
        self._local_ended = False
        self._error: Exception | None = None
        self._receive_lot = trio.lowlevel.ParkingLot()
        self._send_lot = trio.lowlevel.ParkingLot()
        self._cancel_on_failure: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<TunnelStream {self.stream_id} {self.kind.value}>"

    # -- events from the link (never block) ---------------------------------------------

    def _deliver(self, message: Message) -> None:
        if isinstance(message, _REPLIES):
            self.reply = message
            if isinstance(message, Response):
                self._remote_ended = message.end_stream
            elif not message.success:
                self._remote_ended = self._local_ended = True
        elif isinstance(message, _PAYLOADS):
            self.buffered += flow_size(message)
            self.received_bytes += len(message.data)
            self._inbox.append(message)
            if isinstance(message, Data) and message.end_stream:
                self._remote_ended = True
        elif isinstance(message, WebSocketClose):
            self._inbox.append(message)
            self._remote_ended = True
        if self._receive_lot:
            self._receive_lot.unpark_all()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._receive_lot.unpark_all()
        self._send_lot.unpark_all()
        if self._cancel_on_failure is not None:
            self._cancel_on_failure.cancel()

    def _wake_senders(self) -> None:
        if self._send_lot:
            self._send_lot.unpark_all()

    @property
    def error(self) -> Exception | None:
        return self._error

    def cancel_on_failure(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` once the stream is reset or its link closes (at once if it has).

        Work that reads nothing from the stream for a while (a slow origin, a tunnel the
        peer half-closed) still stops when the stream goes away; no task waits for it.
        """
        self._cancel_on_failure = scope
        if self._error is not None:
            scope.cancel()

    # -- replies --------------------------------------------------------------------------

    async def wait_reply(self) -> Reply:
        """Agent side: wait for the server's Response / ConnectAck / WebSocketAck."""
        while self.reply is None:
            if self._error is not None:
                raise self._error
            await self._receive_lot.park()
        return self.reply

    async def send_reply(self, reply: Reply) -> None:
        """Server side: answer the stream's opening message.

        A reply whose frame the peer would refuse for its size raises FrameTooLarge and sends
        nothing: the stream is still unanswered, so the caller can send a smaller one (502).
        """
        self._check_usable()
        self._link._enqueue(self, reply, 0)
        self.reply = reply
        if isinstance(reply, Response) and reply.end_stream:
            self._local_ended = True
        elif isinstance(reply, ConnectAck | WebSocketAck) and not reply.success:
            self._local_ended = self._remote_ended = True
        await trio.lowlevel.checkpoint_if_cancelled()

    # -- sending --------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._local_ended:
            raise trio.ClosedResourceError("this side of the stream is already closed")

    def _credit_now(self, want: int) -> int:
        """How many of `want` bytes may go now (0: wait for credit or queue room)."""
        self._check_usable()
        link = self._link
        credit = link.conn.send_window(self.stream_id)
        if credit > 0 and (room := link._send_room(self)) > 0:
            return min(want, credit, room, link.conn.max_send_data)
        return 0

    async def _wait_credit(self, want: int) -> int:
        """Wait until some credit and queue room exist; return how many bytes may go now."""
        self.send_blocked = True  # left set if the wait is cancelled
        while not (n := self._credit_now(want)):
            await self._send_lot.park()
        self.send_blocked = False
        return n

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes on a Request or Connect stream, waiting for credit as needed."""
        await self._send_payload(data, end_stream=False)

    async def send_from(self, source: trio.abc.ReceiveStream, max_bytes: int) -> int:
        """Read up to `max_bytes` from `source` once and send them; 0 once `source` ended (this
        side of the stream stays open: `send_eof` is the caller's).

        From a socket, the read is made only once its bytes can be queued at once: credit and
        room in the link's queue are reserved first, and on a busy link only after the socket
        has bytes, so idle tunnels reserve nothing there. Bytes that must wait stay in the
        socket's kernel buffer, where TCP's own flow control holds back their sender, instead
        of in a read waiting for room (a thousand tunnels behind a busy link held 64 KiB each).
        A source that is not a socket is read first, then sent as `send_all` does.
        """
        self.send_blocked = False
        if not isinstance(source, trio.SocketStream):
            data = await source.receive_some(max_bytes)
            if data:
                await self.send_all(data)
            return len(data)
        link = self._link
        while True:
            if link._contended(max_bytes):
                await trio.lowlevel.wait_readable(source.socket)  # reserving nothing meanwhile
                n = self._credit_now(max_bytes) or await self._wait_credit(max_bytes)
                break
            if n := self._credit_now(max_bytes):
                break  # the read may wait for the socket, holding its room (see _contended)
            await self._wait_credit(max_bytes)  # for credit or this stream's own room
        link._reserve(self, n)
        used = 0
        try:
            data = await source.receive_some(n)
            used = len(data)
        finally:
            link._release(self, n, used)
        if data:  # the room is still there: queued at once, no wait
            await self._send_payload(data, end_stream=False)
        return used

    async def send_eof(self) -> None:
        """Half-close: the peer's receive_some returns b"" after what was sent."""
        await self._send_payload(b"", end_stream=True)

    async def send_last(self, data: bytes | bytearray | memoryview) -> None:
        """send_all(data) then send_eof(), the end riding on the last Data frame."""
        await self._send_payload(data, end_stream=True)

    async def _send_payload(self, data: bytes | bytearray | memoryview, end_stream: bool) -> None:
        view = memoryview(data)
        self._check_usable()
        if not view:
            if end_stream:
                self._link._enqueue_end(self)
                self._local_ended = True
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        whole = data if isinstance(data, bytes) else None
        while True:
            n = self._credit_now(len(view)) or await self._wait_credit(len(view))
            # When it all fits in one frame, send the caller's bytes object: no copy.
            chunk = whole if whole is not None and n == len(whole) else bytes(view[:n])
            whole = None
            view = view[n:]
            last = end_stream and not view
            self._link._enqueue(self, Data(self.stream_id, last, chunk), len(chunk))
            self.sent_bytes += len(chunk)
            if last:
                self._local_ended = True
            if not view:
                break
        await trio.lowlevel.checkpoint_if_cancelled()

    async def send_ws(self, data: bytes, *, binary: bool, fin: bool = True) -> None:
        """Send one WebSocket message (fragmented to fit frames and credit)."""
        view = memoryview(data)
        while True:
            n = await self._wait_credit(max(1, len(view)))
            n = min(n, len(view))
            last = fin and n == len(view)
            message = WebSocketMessage(self.stream_id, binary, last, bytes(view[:n]))
            self._link._enqueue(self, message, max(1, n))
            self.sent_bytes += n
            view = view[n:]
            if not view:
                break
        await trio.lowlevel.checkpoint_if_cancelled()

    async def send_ws_close(self, code: int = 1000, reason: str = "") -> None:
        self._check_usable()
        self._link._enqueue(self, WebSocketClose(self.stream_id, code, reason), 0)
        self._local_ended = True
        await trio.lowlevel.checkpoint_if_cancelled()

    # -- receiving ------------------------------------------------------------------------

    async def _next_inbound(self) -> Inbound | None:
        while not self._inbox:
            if self._remote_ended:  # the peer's side is complete, whatever happened since
                await trio.lowlevel.checkpoint_if_cancelled()
                return None
            if self._error is not None:
                raise self._error
            await self._receive_lot.park()
        message = self._inbox.popleft()
        await trio.lowlevel.checkpoint_if_cancelled()
        return message

    def _consumed(self, size: int) -> None:
        self.buffered -= size
        self._link._acknowledge(self.stream_id, size)

    def _take(self, max_bytes: int | None) -> bytes | None:
        """Up to `max_bytes` of what has arrived; b"" at the end; None if nothing is here."""
        if self._partial is not None:
            piece = self._partial[:max_bytes] if max_bytes else self._partial
            rest = self._partial[len(piece) :]
            self._partial = rest if rest else None
            self._consumed(len(piece))
            return bytes(piece)
        if self._inbox:
            message = self._inbox.popleft()
            assert isinstance(message, Data), f"{type(message).__name__} on a byte stream"
            data = message.data
            if max_bytes is not None and len(data) > max_bytes:
                self._partial = memoryview(data)[max_bytes:]
                data = data[:max_bytes]
            self._consumed(len(data))
            return data  # b"" for the bare end-of-stream frame
        if self._remote_ended:  # the peer's side is complete, whatever happened since
            return b""
        if self._error is not None:
            raise self._error
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Next bytes of a Request/Connect stream; b"" once the peer has ended its side."""
        while (data := self._take(max_bytes)) is None:
            await self._receive_lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        return data

    def receive_nowait(self) -> bytes | None:
        """What `receive_some()` would return without waiting, or None if it would wait.

        Lets a relay gather a response head and the body bytes that arrived with it into
        one write to its client.
        """
        return self._take(None)

    async def receive_ws(self) -> WebSocketMessage | WebSocketClose | None:
        """Next WebSocket fragment or close; None if the stream ended without a close."""
        message = await self._next_inbound()
        if isinstance(message, WebSocketMessage):
            self._consumed(flow_size(message))
        assert not isinstance(message, Data), "Data frame on a WebSocket stream"
        return message

    # -- ending ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._error is not None or (self._local_ended and self._remote_ended)

    def reset(self, code: int = ErrorCode.CANCEL, message: str = "") -> None:
        """End the stream at once both ways; queued unsent data is dropped.

        If this side already ended (send_eof, or a reply with end_stream), what it sent still
        reaches the peer, followed by the Reset: the peer is only told to stop sending.
        """
        if self.finished:
            return
        self._fail(StreamReset(code, message, by_peer=False))
        self._link._reset(self, Reset(self.stream_id, code, message))

    async def aclose(self) -> None:
        """Release the stream: reset it unless both sides already ended."""
        if not (self._local_ended and self._remote_ended):
            self.reset(ErrorCode.CANCEL, "closed before the end of the stream")
        await trio.lowlevel.checkpoint_if_cancelled()

    async def __aenter__(self) -> TunnelStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._local_ended and self._remote_ended:
            return  # the common case: nothing to reset, no checkpoint needed
        with trio.CancelScope(shield=True):
            await self.aclose()


__all__ = ["Inbound", "LinkClosed", "Reply", "StreamReset", "TunnelStream"]
