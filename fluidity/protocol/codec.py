"""Frame codec: a 4-byte big-endian length, then a msgpack array ``[kind, field, ...]``.

The decoder checks the length prefix against the limit *before* it buffers the body, unpacks
with msgpack's size limits and no ext types, and hands out validated messages. Payload-carrying
frames (Data, WebSocketMessage) put the payload last, so the encoder can emit the payload object
itself after a small header instead of copying it into a packed buffer.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import msgpack

from .errors import ErrorCode, LinkProtocolError
from .messages import (
    MESSAGE_TYPES,
    Connect,
    ConnectAck,
    Data,
    Message,
    Request,
    Response,
    WebSocketAck,
    WebSocketMessage,
    WebSocketOpen,
)

LENGTH = struct.Struct(">I")
#: Bytes a frame may carry besides its payload (kind, stream id, flags, msgpack headers).
FRAME_ENVELOPE = 64
DEFAULT_MAX_DATA_SIZE = 64 * 1024
#: Fields that fit in the envelope in front of a payload, by kind.
_PAYLOAD_KINDS = {Data.KIND: 3, WebSocketMessage.KIND: 4}
#: Head frames: their size comes from outside (a client's or an origin's headers), so one
#: above the limit costs its stream (`OversizedHead`), not the link.
HEAD_KINDS = frozenset(
    cls.KIND for cls in (Request, Response, Connect, ConnectAck, WebSocketOpen, WebSocketAck)
)
#: An oversized head frame is skipped, not buffered, up to this many times the frame limit;
#: anything longer is not a head that went wrong but a peer to stop listening to.
SKIP_FACTOR = 16
#: Bytes of an oversized frame read to learn its kind and stream id (array, kind, uint32 id).
_PEEK = 8


@attrs.frozen
class OversizedHead:
    """A head frame above the limit was skipped: the decoder's report to the Connection."""

    kind: int
    stream_id: int
    size: int


def brief(value: object, limit: int = 40) -> str:
    """A peer's value for an error message: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def encode(message: Message) -> list[bytes]:
    """Encode one message as a list of buffers whose concatenation is the frame."""
    fields = message.to_wire()
    if message.KIND in _PAYLOAD_KINDS:
        payload: bytes = fields.pop()
        head = msgpack.packb([message.KIND, *fields])
        # Turn the packed fixarray of n items into one of n+1 and append a bin header.
        head = bytes((head[0] + 1,)) + head[1:] + _bin_header(len(payload))
        return [LENGTH.pack(len(head) + len(payload)) + head, payload]
    body = msgpack.packb([message.KIND, *fields])
    return [LENGTH.pack(len(body)) + body]


def encode_bytes(message: Message) -> bytes:
    """Encode one message as a single bytes object (convenient off the data path)."""
    return b"".join(encode(message))


class FrameDecoder:
    """Turns a byte stream into messages: `receive_data(bytes)` in, `next_message()` out."""

    def __init__(self, max_data_size: int = DEFAULT_MAX_DATA_SIZE) -> None:
        self.max_frame_size = max_data_size + FRAME_ENVELOPE
        self._buffer = bytearray()
        self._offset = 0
        #: Bytes of an oversized head frame still to arrive and be thrown away.
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded into messages."""
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = memoryview(data)[n:]
        if self._offset and self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif self._offset > 65536:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data
        self._check_length()

    def _check_length(self) -> int | None:
        start = self._offset
        if len(self._buffer) - start < 4:
            return None
        (length,) = LENGTH.unpack_from(self._buffer, start)
        if length > self.max_frame_size * SKIP_FACTOR:
            raise self._too_large(length)
        if length == 0:
            raise LinkProtocolError("empty frame")
        return int(length)

    def _too_large(self, length: int) -> LinkProtocolError:
        return LinkProtocolError(
            f"frame of {length} bytes exceeds the limit of {self.max_frame_size}",
            ErrorCode.FRAME_SIZE_ERROR,
        )

    def next_message(self) -> Message | OversizedHead | None:
        """The next complete message, or None if more bytes are needed.

        A head frame above the limit is skipped without buffering it and reported as
        `OversizedHead`; any other frame above the limit is a link error.
        """
        length = self._check_length()
        if length is None:
            return None
        if length > self.max_frame_size:
            return self._skip_oversized(length)
        if len(self._buffer) - self._offset - 4 < length:
            return None
        start = self._offset + 4
        self._offset = start + length
        with memoryview(self._buffer) as view, view[start : start + length] as body:
            fields = self._unpack(body)
        if self._offset == len(self._buffer):
            # All decoded: release the read now, not when the next one arrives (an idle link
            # would keep up to a read's worth, 256 KiB, for as long as it stays idle).
            self._buffer.clear()
            self._offset = 0
        return _message_from(fields)

    def _skip_oversized(self, length: int) -> OversizedHead | None:
        start = self._offset + 4
        have = len(self._buffer) - start
        if have < _PEEK:
            return None
        try:
            unpacker = msgpack.Unpacker(max_buffer_size=_PEEK)
            unpacker.feed(bytes(self._buffer[start : start + _PEEK]))
            unpacker.read_array_header()
            kind, stream_id = unpacker.unpack(), unpacker.unpack()
        except Exception:  # msgpack raises several types; too short or not a head: no id
            kind = stream_id = None
        if type(kind) is not int or kind not in HEAD_KINDS or type(stream_id) is not int:
            raise self._too_large(length)
        taken = min(have, length)
        self._offset = start + taken
        self._skip = length - taken
        return OversizedHead(kind, stream_id, length)

    def _unpack(self, body: memoryview) -> list[Any]:
        limit = self.max_frame_size
        try:
            fields = msgpack.unpackb(
                body,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_bin_len=limit,
                max_str_len=limit,
                max_array_len=1024,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises many types for bad input
            raise LinkProtocolError(f"undecodable frame: {exc.__class__.__name__}") from None
        if type(fields) is not list or not fields:
            raise LinkProtocolError("a frame must be a non-empty msgpack array")
        return fields


def _message_from(fields: list[Any]) -> Message:
    kind = fields[0]
    cls = MESSAGE_TYPES.get(kind) if type(kind) is int else None
    if cls is None:
        raise LinkProtocolError(f"unknown frame kind {brief(kind)}")
    return cls.from_wire(fields[1:])
