"""Error codes and the exception tree of the wire protocol.

::

    ProtocolError                 (has .code: ErrorCode)
    ├── RemoteProtocolError       the peer broke the protocol
    │   ├── LinkProtocolError     ... in a way that ends the link (GoAway sent, link closed)
    │   └── StreamProtocolError   ... on one stream only (that stream is reset)
    └── LocalProtocolError        we asked the protocol to do something it forbids (a bug here)
        └── FrameTooLarge         ... a frame the peer would not accept; nothing was sent

Like h11, a `Connection` that raised `LinkProtocolError` is dead; a `StreamProtocolError`
leaves the connection and every other stream usable.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Codes carried by Reset and GoAway frames (see docs/protocol.md)."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 4
    FRAME_SIZE_ERROR = 5
    REFUSED_STREAM = 6
    CANCEL = 7
    UNSUPPORTED_VERSION = 8
    KEEPALIVE_TIMEOUT = 9
    UPSTREAM_ERROR = 10

    @classmethod
    def parse(cls, value: int) -> ErrorCode | int:
        """Known codes become members; unknown ones stay ints (peers may be newer)."""
        try:
            return cls(value)
        except ValueError:
            return value


class ProtocolError(Exception):
    """Base of every protocol violation; carries the code to send to the peer."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class LinkProtocolError(RemoteProtocolError):
    """A violation that ends the whole link."""


class StreamProtocolError(RemoteProtocolError):
    """A violation confined to one stream; only that stream is reset."""

    def __init__(
        self, stream_id: int, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR
    ) -> None:
        super().__init__(message, code)
        self.stream_id = stream_id


class LocalProtocolError(ProtocolError):
    """This side tried something the protocol forbids (a programming error)."""


class FrameTooLarge(LocalProtocolError):
    """A message encodes into a frame above the peer's limit; nothing was sent or recorded.

    Not a bug of the caller: a head's size comes from outside (a client's request, an origin's
    response). Sending it would cost the whole link (the peer fails it with FRAME_SIZE_ERROR),
    so the caller answers that one request instead (431, 414 or 502).
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes exceeds the peer's limit of {limit} bytes")
        self.size = size
        self.limit = limit
