"""The messages of the wire protocol: frozen attrs classes, one per frame kind.

Each class knows its wire kind and how to turn itself into a msgpack array and back.
`from_wire` validates every field strictly (types, ranges), so anything that comes out of the
decoder is well-formed; the state rules live in `connection.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs

from .errors import LinkProtocolError

Headers = tuple[tuple[bytes, bytes], ...]

MAX_UINT32 = 2**32 - 1
MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1
MAX_HEADERS = 512
MAX_SUBPROTOCOLS = 64


def headers_from(pairs: Sequence[tuple[bytes | str, bytes | str]]) -> Headers:
    """Build a Headers tuple from name/value pairs given as bytes or str (latin-1)."""
    return tuple(
        (
            n.encode("latin-1") if isinstance(n, str) else bytes(n),
            v.encode("latin-1") if isinstance(v, str) else bytes(v),
        )
        for n, v in pairs
    )


# -- field checkers: value from the wire -> validated Python value, or LinkProtocolError -------


def _bad(what: str, value: object) -> LinkProtocolError:
    return LinkProtocolError(f"bad {what}: {type(value).__name__}")


def _uint(limit: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if type(value) is not int or not 0 <= value <= limit:
            raise _bad("integer field", value)
        return value

    return check


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise _bad("bytes field", value)
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise _bad("string field", value)
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _bad("boolean field", value)
    return value


def _headers(value: Any) -> Headers:
    if type(value) is not list or len(value) > MAX_HEADERS:
        raise _bad("header list", value)
    out = []
    for pair in value:
        if type(pair) is not list or len(pair) != 2:
            raise _bad("header pair", pair)
        out.append((_bytes(pair[0]), _bytes(pair[1])))
    return tuple(out)


def _str_tuple(value: Any) -> tuple[str, ...]:
    if type(value) is not list or len(value) > MAX_SUBPROTOCOLS:
        raise _bad("string list", value)
    return tuple(_str(v) for v in value)


_sid = _uint(MAX_STREAM_ID)
_u32 = _uint(MAX_UINT32)
_u64 = _uint(2**64 - 1)
_status = _uint(999)
_u16 = _uint(65535)


def _wire_headers(headers: Headers) -> list[list[bytes]]:
    return [[n, v] for n, v in headers]


class Message:
    """Base of all messages. Subclasses set KIND and list their wire fields in order."""

    KIND: ClassVar[int]
    CHECKS: ClassVar[tuple[Callable[[Any], Any], ...]]
    __slots__ = ()

    def to_wire(self) -> list[Any]:
        raise TypeError(f"{type(self).__name__} defines no wire form")  # pragma: no cover

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Message:
        if len(fields) != len(cls.CHECKS):
            raise LinkProtocolError(f"{cls.__name__}: expected {len(cls.CHECKS)} fields")
        return cls(*[check(v) for check, v in zip(cls.CHECKS, fields, strict=True)])


class StreamMessage(Message):
    """A message that belongs to one stream."""

    __slots__ = ()
    stream_id: int


# -- link messages --------------------------------------------------------------------------


class _HelloFields(Message):
    __slots__ = ()
    CHECKS = (_u32, _str, _u32, _u32, _u32)
    version: int
    peer_name: str
    max_data_size: int
    initial_window: int
    max_streams: int

    def to_wire(self) -> list[Any]:
        return [
            self.version,
            self.peer_name,
            self.max_data_size,
            self.initial_window,
            self.max_streams,
        ]


@attrs.frozen
class Hello(_HelloFields):
    """Agent -> server, first frame: version, and the limits the agent enforces on receipt."""

    KIND = 0
    version: int
    peer_name: str
    max_data_size: int
    initial_window: int
    max_streams: int


@attrs.frozen
class HelloAck(_HelloFields):
    """Server -> agent, answer to Hello: the version chosen and the server's limits."""

    KIND = 1
    version: int
    peer_name: str
    max_data_size: int
    initial_window: int
    max_streams: int


@attrs.frozen
class Ping(Message):
    """Asks the peer to echo `opaque` in a Pong (keepalive and round-trip time)."""

    KIND = 2
    CHECKS = (_u64,)
    opaque: int

    def to_wire(self) -> list[Any]:
        return [self.opaque]


@attrs.frozen
class Pong(Message):
    """The answer to a Ping, echoing its `opaque` value."""

    KIND = 3
    CHECKS = (_u64,)
    opaque: int

    def to_wire(self) -> list[Any]:
        return [self.opaque]


@attrs.frozen
class GoAway(Message):
    """No new streams above last_stream_id; the sender closes the link once open ones finish."""

    KIND = 4
    CHECKS = (_sid, _u32, _str)
    last_stream_id: int
    code: int
    reason: str = ""

    def to_wire(self) -> list[Any]:
        return [self.last_stream_id, self.code, self.reason]


# -- stream messages ------------------------------------------------------------------------


@attrs.frozen
class Request(StreamMessage):
    """Opens an HTTP request stream. `url` is absolute-form; the body follows as Data."""

    KIND = 5
    CHECKS = (_sid, _bytes, _bytes, _headers, _bool)
    stream_id: int
    method: bytes
    url: bytes
    headers: Headers = ()
    end_stream: bool = False

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.method, self.url, _wire_headers(self.headers), self.end_stream]


@attrs.frozen
class Response(StreamMessage):
    """Answers a Request stream with the response head; the body follows as Data."""

    KIND = 6
    CHECKS = (_sid, _status, _bytes, _headers, _bool)
    stream_id: int
    status: int
    reason: bytes = b""
    headers: Headers = ()
    end_stream: bool = False

    def to_wire(self) -> list[Any]:
        return [
            self.stream_id,
            self.status,
            self.reason,
            _wire_headers(self.headers),
            self.end_stream,
        ]


@attrs.frozen
class Data(StreamMessage):
    """A piece of a body or of tunnel bytes. Counted against the receiver's window."""

    KIND = 7
    CHECKS = (_sid, _bool, _bytes)
    stream_id: int
    end_stream: bool
    data: bytes

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.end_stream, self.data]


@attrs.frozen
class WindowUpdate(StreamMessage):
    """Gives the peer `increment` more bytes of credit on a stream."""

    KIND = 8
    CHECKS = (_sid, _u32)
    stream_id: int
    increment: int

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.increment]


@attrs.frozen
class Reset(StreamMessage):
    """Ends a stream at once in both directions."""

    KIND = 9
    CHECKS = (_sid, _u32, _str)
    stream_id: int
    code: int
    message: str = ""

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.code, self.message]


@attrs.frozen
class Connect(StreamMessage):
    """Opens a raw TCP tunnel stream to host:port (HTTP CONNECT)."""

    KIND = 10
    CHECKS = (_sid, _str, _u16)
    stream_id: int
    host: str
    port: int

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.host, self.port]


@attrs.frozen
class ConnectAck(StreamMessage):
    """Answers Connect. status 200 is success; 502/504/403 say why it failed."""

    KIND = 11
    CHECKS = (_sid, _status, _str)
    stream_id: int
    status: int
    error: str = ""

    @property
    def success(self) -> bool:
        return self.status == 200

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.status, self.error]


@attrs.frozen
class WebSocketOpen(StreamMessage):
    """Opens a WebSocket stream to `url` (ws:// or wss://) offering `subprotocols`."""

    KIND = 12
    CHECKS = (_sid, _str, _headers, _str_tuple)
    stream_id: int
    url: str
    headers: Headers = ()
    subprotocols: tuple[str, ...] = ()

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.url, _wire_headers(self.headers), list(self.subprotocols)]


@attrs.frozen
class WebSocketAck(StreamMessage):
    """Answers WebSocketOpen. status 101 is success, with the subprotocol the origin chose."""

    KIND = 13
    CHECKS = (_sid, _status, _opt_str, _headers, _str)
    stream_id: int
    status: int
    subprotocol: str | None = None
    headers: Headers = ()
    error: str = ""

    @property
    def success(self) -> bool:
        return self.status == 101

    def to_wire(self) -> list[Any]:
        return [
            self.stream_id,
            self.status,
            self.subprotocol,
            _wire_headers(self.headers),
            self.error,
        ]


@attrs.frozen
class WebSocketMessage(StreamMessage):
    """A fragment of a WebSocket message; `fin` marks its last fragment. Flow controlled."""

    KIND = 14
    CHECKS = (_sid, _bool, _bool, _bytes)
    stream_id: int
    binary: bool
    fin: bool
    data: bytes

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.binary, self.fin, self.data]


@attrs.frozen
class WebSocketClose(StreamMessage):
    """The sender's side of the WebSocket is closed with this code and reason."""

    KIND = 15
    CHECKS = (_sid, _u16, _str)
    stream_id: int
    code: int = 1000
    reason: str = ""

    def to_wire(self) -> list[Any]:
        return [self.stream_id, self.code, self.reason]


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello,
        HelloAck,
        Ping,
        Pong,
        GoAway,
        Request,
        Response,
        Data,
        WindowUpdate,
        Reset,
        Connect,
        ConnectAck,
        WebSocketOpen,
        WebSocketAck,
        WebSocketMessage,
        WebSocketClose,
    )
}

OPENING_TYPES = (Request, Connect, WebSocketOpen)
REPLY_TYPES = (Response, ConnectAck, WebSocketAck)
