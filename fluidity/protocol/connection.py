"""The link state machine: handshake, stream states, flow control, GoAway. No I/O.

Feed received bytes with `receive_data()`, pull validated messages with `next_event()`.
Encode what you want to send with `send(message)`, which checks it against the state and
returns the frame's buffers. Frames the protocol itself must send (HelloAck, Pong,
WindowUpdate, Reset and GoAway on violations) collect in `data_to_send()`.

Roles: the agent opens streams with odd ids, increasing; the server never opens streams.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator

import attrs

from .codec import (
    DEFAULT_MAX_DATA_SIZE,
    FRAME_ENVELOPE,
    FrameDecoder,
    OversizedHead,
    brief,
    encode,
)
from .errors import (
    ErrorCode,
    FrameTooLarge,
    LinkProtocolError,
    LocalProtocolError,
    StreamProtocolError,
)
from .messages import (
    MAX_STREAM_ID,
    MAX_WINDOW,
    MESSAGE_TYPES,
    OPENING_TYPES,
    REPLY_TYPES,
    Connect,
    ConnectAck,
    Data,
    GoAway,
    Hello,
    HelloAck,
    Message,
    Ping,
    Pong,
    Request,
    Reset,
    Response,
    StreamMessage,
    WebSocketAck,
    WebSocketClose,
    WebSocketMessage,
    WebSocketOpen,
    WindowUpdate,
)

PROTOCOL_VERSION = 1
DEFAULT_INITIAL_WINDOW = 256 * 1024
DEFAULT_MAX_STREAMS = 1024
DEFAULT_MAX_WINDOW = 16 * 1024 * 1024
DEFAULT_RECEIVE_BUDGET = 64 * 1024 * 1024
#: A window grows when half of it was consumed in less than GROWTH_RTTS round trips (quic-go's
#: rule: the sender is then limited by the window, not by the path or the reader).
GROWTH_RTTS = 2.0
#: How much one epoch may grow a window at most. A window-limited sender's data arrives in
#: bursts at the path's rate, so an epoch much shorter than 2 RTT says the path holds several
#: times the window: growing only 2x per epoch (slow start) would take ~6 RTTs to fill 50 ms
#: at 400 Mbit/s, a large share of a 100 MB download.
MAX_GROWTH = 64


#: isinstance() targets as tuples: a `A | B` union would be built on every call.
_ACKS = (ConnectAck, WebSocketAck)
_PAYLOADS = (Data, WebSocketMessage)


class Role(enum.Enum):
    AGENT = "agent"
    SERVER = "server"


class LinkState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class StreamKind(enum.Enum):
    REQUEST = "request"
    CONNECT = "connect"
    WEBSOCKET = "websocket"


_KIND_OF_OPENING: dict[type[Message], StreamKind] = {
    Request: StreamKind.REQUEST,
    Connect: StreamKind.CONNECT,
    WebSocketOpen: StreamKind.WEBSOCKET,
}


@attrs.frozen
class Settings:
    """What this side enforces on what it receives; sent to the peer in Hello/HelloAck."""

    peer_name: str = "fluidity"
    max_data_size: int = DEFAULT_MAX_DATA_SIZE
    initial_window: int = DEFAULT_INITIAL_WINDOW
    max_streams: int = DEFAULT_MAX_STREAMS

    def __attrs_post_init__(self) -> None:
        if not 1024 <= self.max_data_size <= 16 * 1024 * 1024:
            raise ValueError("max_data_size must be between 1 KiB and 16 MiB")
        if not self.max_data_size <= self.initial_window <= MAX_WINDOW:
            raise ValueError("initial_window must be at least max_data_size and below 2**31")
        if not 1 <= self.max_streams <= 2**20:
            raise ValueError("max_streams must be between 1 and 2**20")


@attrs.frozen
class WindowPolicy:
    """How this side sizes the receive windows it grants. Local: nothing of it is on the wire.

    Every stream starts at `Settings.initial_window` (the peer knows that value) and may grow
    up to `max_window` while the application keeps up with a window-limited sender. The
    windows of a link's streams share `receive_budget`: growth takes at most half of what is
    left of it, so no stream can take it all, and grown windows shrink back toward the initial
    one when new streams pushed the total above it.
    """

    max_window: int = DEFAULT_MAX_WINDOW
    receive_budget: int = DEFAULT_RECEIVE_BUDGET

    def __attrs_post_init__(self) -> None:
        if not 0 < self.max_window <= MAX_WINDOW:
            raise ValueError("max_window must be positive and below 2**31")
        if self.receive_budget < 0:
            raise ValueError("receive_budget must not be negative")


@attrs.define
class StreamState:
    """Per-stream bookkeeping. `send_window` is our credit; `recv_window` the peer's."""

    kind: StreamKind
    send_window: int
    recv_window: int
    replied: bool = False
    local_closed: bool = False
    remote_closed: bool = False
    #: Bytes the application consumed that were not yet credited back to the peer.
    unacked: int = 0
    #: The receive window: recv_window + bytes held by the application + unacked. 0 once the
    #: peer's direction ended (nothing more will come, so it no longer counts in the budget).
    window: int = 0
    #: When the current auto-tuning epoch began (the last WindowUpdate, or the first read after
    #: a pause longer than the RTT), None before any read.
    epoch_start: float | None = None
    #: Bytes consumed since `epoch_start` (the read that starts an epoch not counted).
    epoch_bytes: int = 0
    #: When the application last consumed bytes of the stream.
    last_read: float = 0.0


_NO_KIND: frozenset[StreamKind] = frozenset()


@attrs.frozen
class FrameRule:
    """Where one type of frame may appear on a stream: one row, for sending and receiving."""

    #: Stream kinds the frame belongs to.
    kinds: frozenset[StreamKind]
    #: The server's answer to the opening frame: sent once, only by the server.
    reply: bool = False
    #: Stream kinds on which the agent may send it before the reply (a request body).
    early: frozenset[StreamKind] = _NO_KIND


#: The stream rules of docs/protocol.md §5 (Reset and WindowUpdate go anywhere, openings are
#: checked on their own). `_violation` applies them in the documented order.
STREAM_RULES: dict[type[Message], FrameRule] = {
    Response: FrameRule(frozenset({StreamKind.REQUEST}), reply=True),
    ConnectAck: FrameRule(frozenset({StreamKind.CONNECT}), reply=True),
    WebSocketAck: FrameRule(frozenset({StreamKind.WEBSOCKET}), reply=True),
    Data: FrameRule(
        frozenset({StreamKind.REQUEST, StreamKind.CONNECT}),
        early=frozenset({StreamKind.REQUEST}),
    ),
    WebSocketMessage: FrameRule(frozenset({StreamKind.WEBSOCKET})),
    WebSocketClose: FrameRule(frozenset({StreamKind.WEBSOCKET})),
}


@attrs.frozen
class Violation:
    """A broken stream rule: what to say, the code, and whether it costs the whole link."""

    text: str
    code: ErrorCode = ErrorCode.PROTOCOL_ERROR
    link: bool = False


def _violation(
    stream: StreamState, message: Message, sender: Role, ended: bool
) -> Violation | None:
    """The first rule of STREAM_RULES that `message`, sent by `sender`, breaks on `stream`.

    `ended` says whether the sender already ended its direction. Order: reply (rule 1) →
    direction ended (rule 6) → before the reply (rule 2) → kind (rule 5) → empty Data (rule 4).
    """
    cls = type(message)
    rule = STREAM_RULES[cls]
    # Every Data frame passes here on both sides: names are built only for a violation.
    if rule.reply:
        if sender is not Role.SERVER:
            return Violation(f"the agent sent {cls.__name__}", link=True)
        if stream.replied or stream.kind not in rule.kinds:
            return Violation(f"unexpected {cls.__name__}")
        return None
    if ended:
        return Violation(f"{cls.__name__} after the end of stream", ErrorCode.STREAM_CLOSED)
    if not stream.replied and (sender is Role.SERVER or stream.kind not in rule.early):
        return Violation(f"{cls.__name__} before the reply")
    if stream.kind not in rule.kinds:
        return Violation(f"{cls.__name__} on a {stream.kind.value} stream")
    if isinstance(message, Data) and not message.data and not message.end_stream:
        return Violation("empty Data frame without end_stream")
    return None


def _ends_direction(message: Message) -> bool:
    """Whether the frame is the last of its sender's direction (rule 4, rule 6)."""
    if type(message) is Data or type(message) is Response:
        return message.end_stream
    return type(message) is WebSocketClose


def flow_size(message: Data | WebSocketMessage) -> int:
    """Bytes a payload frame counts against the window; an empty WebSocket fragment counts 1."""
    n = len(message.data)
    return n if n or isinstance(message, Data) else 1


class Connection:
    """One side of a link. Not thread-safe; one task drives it."""

    def __init__(
        self, role: Role, settings: Settings | None = None, policy: WindowPolicy | None = None
    ) -> None:
        self.role = role
        self.local_settings = settings or Settings()
        self.policy = policy or WindowPolicy()
        if self.policy.max_window < self.local_settings.initial_window:
            raise ValueError("max_window must be at least initial_window")
        #: Sum of the receive windows of the streams whose peer may still send.
        self.recv_committed = 0
        #: Smoothed round-trip time of the link in seconds (the application measures it with
        #: Ping/Pong and reports it with `note_rtt`); windows grow only once it is known.
        self.rtt: float | None = None
        self.peer_settings: Settings | None = None
        self.peer_name = ""
        self.state = LinkState.HANDSHAKE
        self.streams: dict[int, StreamState] = {}
        self.highest_stream_id = 0
        self.goaway_sent: GoAway | None = None
        self.goaway_received: GoAway | None = None
        self._decoder = FrameDecoder(self.local_settings.max_data_size)
        self._outbox: list[bytes] = []
        self._hello_sent = False

    # -- handshake ------------------------------------------------------------------------

    def initiate(self) -> None:
        """Agent only: queue the Hello that starts the link."""
        if self.role is not Role.AGENT or self._hello_sent:
            raise LocalProtocolError("only the agent sends Hello, once")
        self._hello_sent = True
        self._queue(self._hello(Hello))

    def _hello(self, cls: type[Hello] | type[HelloAck]) -> Hello | HelloAck:
        s = self.local_settings
        return cls(PROTOCOL_VERSION, s.peer_name, s.max_data_size, s.initial_window, s.max_streams)

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Frames the protocol generated itself, in order; the caller must send them."""
        out, self._outbox = self._outbox, []
        return out

    @property
    def has_data_to_send(self) -> bool:
        """Whether `data_to_send()` has frames: a writer need not be woken for none."""
        return bool(self._outbox)

    def _queue(self, message: Message) -> None:
        self._outbox.extend(encode(message))

    @property
    def max_send_data(self) -> int:
        """The largest payload the peer accepts in one frame."""
        return self._peer().max_data_size

    @property
    def max_send_frame(self) -> int:
        """The largest frame body the peer accepts (its max_data_size + FRAME_ENVELOPE)."""
        return self._peer().max_data_size + FRAME_ENVELOPE

    def _peer(self) -> Settings:
        if self.peer_settings is None:
            raise LocalProtocolError("the handshake has not completed")
        return self.peer_settings

    def next_stream_id(self) -> int:
        """The id the agent must use for its next stream."""
        return self.highest_stream_id + 2 if self.highest_stream_id else 1

    def can_open_stream(self) -> bool:
        return (
            self.role is Role.AGENT
            and self.state is LinkState.OPEN
            and self.goaway_received is None
            and self.goaway_sent is None
            and len(self.streams) < self._peer().max_streams
        )

    def send_window(self, stream_id: int) -> int:
        """Bytes we may send on the stream now (0 for a stream that is gone)."""
        stream = self.streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    def send(self, message: Message) -> list[bytes]:
        """Check `message` against the state, update it, and return the frame's buffers.

        A frame the peer would refuse for its size raises FrameTooLarge before anything is
        recorded (payload frames are sized by max_send_data and cannot be too large).
        """
        if isinstance(message, _PAYLOADS):
            self.record(message)
            return encode(message)
        frames = encode(message)
        if self.peer_settings is not None:
            size = sum(map(len, frames)) - 4  # the limit is on the body, not the prefix
            if size > self.max_send_frame:
                raise FrameTooLarge(size, self.max_send_frame)
        self.record(message)
        return frames

    def record(self, message: Message) -> None:
        """Check `message` against the state and update it, as `send` does, but encode nothing:
        for a message that goes out inside another frame (the end of a stream folded into its
        last Data frame, which is still queued)."""
        if self.state is LinkState.CLOSED:
            raise LocalProtocolError("the link is closed")
        if isinstance(message, StreamMessage):
            self._send_stream_message(message)
        elif isinstance(message, GoAway):
            self.goaway_sent = message
        elif isinstance(message, Ping | Pong):
            if self.state is not LinkState.OPEN:
                raise LocalProtocolError("ping before the handshake completed")
        else:
            raise LocalProtocolError(f"{type(message).__name__} is sent by the protocol itself")

    def _send_stream_message(self, message: StreamMessage) -> None:
        sid = message.stream_id
        if isinstance(message, OPENING_TYPES):
            if not self.can_open_stream():
                raise LocalProtocolError("cannot open a stream now (see can_open_stream)")
            if sid != self.next_stream_id():
                raise LocalProtocolError(f"next stream id must be {self.next_stream_id()}")
            self.highest_stream_id = sid
            self._add_stream(sid, _KIND_OF_OPENING[type(message)])
            if isinstance(message, Request) and message.end_stream:
                self._close_local(sid)
            return
        if isinstance(message, WindowUpdate):
            raise LocalProtocolError("use acknowledge_received_data() to return credit")
        stream = self.streams.get(sid)
        if stream is None:
            if isinstance(message, Reset):
                return  # resetting a stream that already ended is harmless
            raise LocalProtocolError(f"stream {sid} is not open")
        if isinstance(message, Reset):
            self._drop(sid)
            return
        broken = _violation(stream, message, self.role, stream.local_closed)
        if broken is not None:
            raise LocalProtocolError(f"stream {sid}: {broken.text}")
        if isinstance(message, _PAYLOADS):
            size = flow_size(message)
            if len(message.data) > self.max_send_data:
                raise LocalProtocolError("payload exceeds the peer's max_data_size")
            if size > stream.send_window:
                raise LocalProtocolError("payload exceeds the stream's send window")
            stream.send_window -= size
        elif isinstance(message, REPLY_TYPES):
            stream.replied = True
            if isinstance(message, _ACKS) and not message.success:
                self._drop(sid)
                return
        if _ends_direction(message):
            self._close_local(sid)

    def _add_stream(self, sid: int, kind: StreamKind) -> None:
        initial = self.local_settings.initial_window
        self.streams[sid] = StreamState(
            kind, send_window=self._peer().initial_window, recv_window=initial, window=initial
        )
        self.recv_committed += initial

    def _drop(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.recv_committed -= stream.window

    def _close_local(self, sid: int) -> None:
        stream = self.streams[sid]
        stream.local_closed = True
        if stream.remote_closed:
            self._drop(sid)

    def _close_remote(self, sid: int) -> None:
        stream = self.streams[sid]
        stream.remote_closed = True
        self.recv_committed -= stream.window  # nothing more will come: release the window
        stream.window = 0
        if stream.local_closed:
            self._drop(sid)

    # -- flow control ---------------------------------------------------------------------

    def note_rtt(self, sample: float) -> None:
        """Report a measured round trip (seconds); smoothed as TCP does (RFC 6298, 1/8)."""
        if sample >= 0:
            self.rtt = sample if self.rtt is None else self.rtt + (sample - self.rtt) / 8

    def acknowledge_received_data(
        self, stream_id: int, size: int, now: float | None = None
    ) -> None:
        """The application consumed `size` bytes of the stream: hand the credit back.

        WindowUpdate frames are batched: one goes out once half the stream's window is
        consumed. With `now` (seconds, any monotonic clock) the window is auto-tuned at that
        moment (see `WindowPolicy` and docs/protocol.md §6); without it, it stays as it is.
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed or size <= 0:
            return
        if now is not None:
            if stream.epoch_start is None or (
                self.rtt is not None and now - stream.last_read > self.rtt
            ):
                # The first read, or the first after a pause: what came before (a TLS
                # handshake, a client that paused) says nothing about the path's pace.
                stream.epoch_start, stream.epoch_bytes = now, 0
            else:
                stream.epoch_bytes += size
            stream.last_read = now
        stream.unacked += size
        if stream.unacked < stream.window // 2:
            return
        increment, stream.unacked = stream.unacked, 0
        if now is not None:
            increment += self._retune(stream, increment, now)
        if increment > 0:
            stream.recv_window += increment
            self._queue(WindowUpdate(stream_id, increment))

    def _retune(self, stream: StreamState, consumed: int, now: float) -> int:
        """Resize the stream's window at the end of an epoch; return the change (may be < 0).

        Shrinks a grown window toward the initial one while the link is over its budget (the
        shrink is taken from the credit being returned, so it is never below -consumed).
        Otherwise, if the epoch's bytes were consumed at a pace that would take less than
        GROWTH_RTTS round trips for half the window, grows it to the window that would make
        such an epoch last GROWTH_RTTS round trips: at least 4x, at most MAX_GROWTH x,
        max_window, and half of the budget left.
        """
        assert stream.epoch_start is not None
        elapsed = now - stream.epoch_start
        paced = stream.epoch_bytes
        stream.epoch_start, stream.epoch_bytes = now, 0
        window = stream.window
        over = self.recv_committed - self.policy.receive_budget
        if over > 0:
            change = -min(window - self.local_settings.initial_window, over, consumed)
        elif (
            self.rtt is not None
            and paced > 0
            and elapsed * window < GROWTH_RTTS * self.rtt * 2 * paced
        ):
            # The condition, multiplied out: elapsed < GROWTH_RTTS * rtt * paced / (window/2).
            wanted = 2 * GROWTH_RTTS * self.rtt * paced / elapsed if elapsed > 0 else math.inf
            target = min(max(4 * window, wanted), MAX_GROWTH * window, self.policy.max_window)
            change = max(0, min(round(target) - window, -over // 2))
        else:
            return 0
        stream.window += change
        self.recv_committed += change
        return change

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer."""
        if self.state is LinkState.CLOSED:
            raise LocalProtocolError("the link is closed")
        try:
            self._decoder.receive_data(data)
        except LinkProtocolError as exc:
            self._fail(exc)

    def next_event(self) -> Message | None:
        """The next message from the peer, validated against the state, or None for more bytes.

        Raises StreamProtocolError (that stream has been reset; keep going) or LinkProtocolError
        (a GoAway is queued in data_to_send(); the link is dead).
        """
        while self.state is not LinkState.CLOSED:
            try:
                message = self._decoder.next_message()
                if message is None:
                    return None
                if isinstance(message, OversizedHead):
                    self._process_oversized(message)
                    continue
                if self._process(message):
                    return message
            except StreamProtocolError as exc:
                self._queue(Reset(exc.stream_id, exc.code, str(exc)))
                self._drop(exc.stream_id)
                raise
            except LinkProtocolError as exc:
                self._fail(exc)
        raise LocalProtocolError("the link is closed")

    def events(self) -> Iterator[Message]:
        """Iterate next_event() until it needs more bytes."""
        while (message := self.next_event()) is not None:
            yield message

    def _fail(self, exc: LinkProtocolError) -> None:
        self._queue(GoAway(self.highest_stream_id, exc.code, str(exc)))
        self.state = LinkState.CLOSED
        raise exc

    def _process(self, message: Message) -> bool:
        """Apply a received message to the state. False means: handled, nothing to report."""
        if self.state is LinkState.HANDSHAKE:
            return self._process_handshake(message)
        if isinstance(message, StreamMessage):
            return self._process_stream_message(message)
        if isinstance(message, Ping):
            self._queue(Pong(message.opaque))
        elif isinstance(message, GoAway):
            self.goaway_received = message
        elif isinstance(message, Hello | HelloAck):
            raise LinkProtocolError("a second Hello")
        return True

    def _process_handshake(self, message: Message) -> bool:
        if isinstance(message, GoAway):
            self.goaway_received = message
            return True
        expected = Hello if self.role is Role.SERVER else HelloAck
        if not isinstance(message, expected):
            raise LinkProtocolError(f"expected {expected.__name__}, got {type(message).__name__}")
        if message.version != PROTOCOL_VERSION:
            raise LinkProtocolError(
                f"protocol version {message.version} is not supported (this side speaks "
                f"{PROTOCOL_VERSION})",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        try:
            self.peer_settings = Settings(
                message.peer_name,
                message.max_data_size,
                message.initial_window,
                message.max_streams,
            )
        except ValueError as exc:
            raise LinkProtocolError(f"unacceptable settings: {exc}") from None
        self.peer_name = message.peer_name
        if self.role is Role.SERVER:
            self._queue(self._hello(HelloAck))
        self.state = LinkState.OPEN
        return True

    def _process_stream_message(self, message: StreamMessage) -> bool:
        sid = message.stream_id
        if isinstance(message, OPENING_TYPES):
            return self._process_opening(message)
        stream = self.streams.get(sid)
        if stream is None:
            if sid % 2 == 0 or sid > self.highest_stream_id:
                raise LinkProtocolError(f"{type(message).__name__} on stream {sid}, never opened")
            return False  # a stream that already ended: a frame in flight, drop it
        if isinstance(message, Reset):
            self._drop(sid)
            return True
        if isinstance(message, WindowUpdate):
            if message.increment == 0 or stream.send_window + message.increment > MAX_WINDOW:
                raise StreamProtocolError(sid, "bad window increment", ErrorCode.FLOW_CONTROL_ERROR)
            stream.send_window += message.increment
            return True
        peer = Role.SERVER if self.role is Role.AGENT else Role.AGENT
        broken = _violation(stream, message, peer, stream.remote_closed)
        if broken is not None:
            if broken.link:
                raise LinkProtocolError(broken.text, broken.code)
            raise StreamProtocolError(sid, broken.text, broken.code)
        if isinstance(message, _PAYLOADS):
            size = flow_size(message)
            if size > stream.recv_window:
                raise LinkProtocolError(
                    f"stream {sid}: {size} bytes sent with {stream.recv_window} of credit",
                    ErrorCode.FLOW_CONTROL_ERROR,
                )
            stream.recv_window -= size
        elif isinstance(message, REPLY_TYPES):
            stream.replied = True
            if isinstance(message, _ACKS) and not message.success:
                self._drop(sid)
                return True
        if _ends_direction(message):
            self._close_remote(sid)
        return True

    def _process_oversized(self, head: OversizedHead) -> None:
        """A head frame above our limit was skipped: it costs its stream, not the link."""
        sid = head.stream_id
        cls = MESSAGE_TYPES[head.kind]
        what = (
            f"{cls.__name__} frame of {head.size} bytes exceeds the limit of "
            f"{self._decoder.max_frame_size}"
        )
        if self.state is not LinkState.OPEN:
            raise LinkProtocolError(what, ErrorCode.FRAME_SIZE_ERROR)
        if cls in OPENING_TYPES:
            if self.role is not Role.SERVER:
                raise LinkProtocolError("the server may not open streams")
            if sid % 2 == 0 or sid <= self.highest_stream_id or sid > MAX_STREAM_ID:
                raise LinkProtocolError(f"stream id {brief(sid)} is not odd and above "
                                        f"{self.highest_stream_id}")  # fmt: skip
            self.highest_stream_id = sid  # seen, and refused: later frames for it are dropped
            raise StreamProtocolError(sid, what, ErrorCode.FRAME_SIZE_ERROR)
        if self.role is not Role.AGENT:
            raise LinkProtocolError(f"the agent sent {cls.__name__}")
        if sid not in self.streams:
            if sid % 2 == 0 or sid > self.highest_stream_id:
                raise LinkProtocolError(f"{cls.__name__} on stream {brief(sid)}, never opened")
            return  # a stream that already ended: drop it, as any frame for it
        raise StreamProtocolError(sid, what, ErrorCode.FRAME_SIZE_ERROR)

    def _process_opening(self, message: Request | Connect | WebSocketOpen) -> bool:
        sid = message.stream_id
        if self.role is not Role.SERVER:
            raise LinkProtocolError("the server may not open streams")
        if sid % 2 == 0 or sid <= self.highest_stream_id:
            raise LinkProtocolError(
                f"stream id {sid} is not odd and above {self.highest_stream_id}"
            )
        self.highest_stream_id = sid
        if self.goaway_sent is not None:
            self._queue(Reset(sid, ErrorCode.REFUSED_STREAM, "the server is going away"))
            return False
        if len(self.streams) >= self.local_settings.max_streams:
            self._queue(Reset(sid, ErrorCode.REFUSED_STREAM, "too many concurrent streams"))
            return False
        self._add_stream(sid, _KIND_OF_OPENING[type(message)])
        if isinstance(message, Request) and message.end_stream:
            self._close_remote(sid)
        return True
