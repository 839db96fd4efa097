"""Errors the multiplexer raises to the code that uses its streams.

::

    TunnelError
    ├── LinkClosed     the link ended (closed, lost, keepalive timeout, protocol error);
    │                  every open stream fails with it
    ├── StreamReset    this stream was reset by the peer or by us; others go on
    └── StreamLimit    no stream could be opened in time: the peer's limit of concurrent
                       streams stayed reached (the link itself is fine)
"""

from __future__ import annotations

from fluidity.protocol import ErrorCode


class TunnelError(Exception):
    """Base of the multiplexer's errors."""


class LinkClosed(TunnelError):
    """The link is gone; nothing more can be sent or received on any of its streams."""


class StreamReset(TunnelError):
    """The stream was reset; `code` says why (`ErrorCode` member or an unknown int)."""

    def __init__(self, code: int, message: str = "", *, by_peer: bool = True) -> None:
        self.code = ErrorCode.parse(code)
        self.by_peer = by_peer
        name = self.code.name if isinstance(self.code, ErrorCode) else str(self.code)
        who = "peer" if by_peer else "local side"
        super().__init__(f"stream reset by {who} ({name}){': ' + message if message else ''}")
        self.message = message


class StreamLimit(TunnelError):
    """The peer's limit of concurrent streams stayed reached for the whole open timeout."""
