"""The frame codec: round trips, byte-at-a-time input, and hostile bytes."""

from __future__ import annotations

import bisect
import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.protocol import (
    DEFAULT_MAX_DATA_SIZE,
    FRAME_ENVELOPE,
    Connect,
    ConnectAck,
    Data,
    ErrorCode,
    FrameDecoder,
    GoAway,
    Hello,
    HelloAck,
    LinkProtocolError,
    Message,
    Ping,
    Pong,
    Request,
    Reset,
    Response,
    WebSocketAck,
    WebSocketClose,
    WebSocketMessage,
    WebSocketOpen,
    WindowUpdate,
    encode,
    encode_bytes,
)
from fluidity.protocol.codec import SKIP_FACTOR, OversizedHead
from fluidity.protocol.messages import MAX_STREAM_ID, MESSAGE_TYPES

LENGTH = struct.Struct(">I")

# -- strategies: every message type, with every field anywhere in its valid range -------------

sids = st.integers(0, MAX_STREAM_ID)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
statuses = st.integers(0, 999)
texts = st.text(max_size=30)
# Up to 300 bytes crosses the bin8/bin16 boundary of the payload header.
payloads = st.binary(max_size=300)
headers = st.lists(st.tuples(st.binary(max_size=16), st.binary(max_size=32)), max_size=6).map(tuple)

MESSAGES: dict[type[Message], st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, u32, texts, u32, u32, u32),
    HelloAck: st.builds(HelloAck, u32, texts, u32, u32, u32),
    Ping: st.builds(Ping, u64),
    Pong: st.builds(Pong, u64),
    GoAway: st.builds(GoAway, sids, u32, texts),
    Request: st.builds(
        Request, sids, st.binary(max_size=10), st.binary(max_size=60), headers, st.booleans()
    ),
    Response: st.builds(Response, sids, statuses, st.binary(max_size=20), headers, st.booleans()),
    Data: st.builds(Data, sids, st.booleans(), payloads),
    WindowUpdate: st.builds(WindowUpdate, sids, u32),
    Reset: st.builds(Reset, sids, u32, texts),
    Connect: st.builds(Connect, sids, texts, u16),
    ConnectAck: st.builds(ConnectAck, sids, statuses, texts),
    WebSocketOpen: st.builds(
        WebSocketOpen, sids, texts, headers, st.lists(texts, max_size=5).map(tuple)
    ),
    WebSocketAck: st.builds(WebSocketAck, sids, statuses, st.none() | texts, headers, texts),
    WebSocketMessage: st.builds(WebSocketMessage, sids, st.booleans(), st.booleans(), payloads),
    WebSocketClose: st.builds(WebSocketClose, sids, u16, texts),
}
any_message = st.one_of(*MESSAGES.values())

# Arbitrary msgpack values, for feeding the decoder well-formed msgpack of the wrong shape.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


def packed_frame(value: object) -> bytes:
    return frame(msgpack.packb(value))


def decode_all(data: bytes, max_data_size: int = DEFAULT_MAX_DATA_SIZE) -> list[Message]:
    decoder = FrameDecoder(max_data_size)
    decoder.receive_data(data)
    messages = list(iter(decoder.next_message, None))
    assert decoder.buffered == 0
    return messages


def decode_hostile(data: bytes, max_data_size: int = DEFAULT_MAX_DATA_SIZE) -> list[Message]:
    """Decode what it can; the only exception allowed to escape the decoder is ProtocolError."""
    decoder = FrameDecoder(max_data_size)
    messages: list[Message] = []
    error: LinkProtocolError | None = None
    try:
        decoder.receive_data(data)
        while (message := decoder.next_message()) is not None:
            messages.append(message)
    except LinkProtocolError as exc:  # never a stream or local error; anything else fails
        error = exc
    if error is not None:
        assert isinstance(error.code, ErrorCode)
    return messages


# -- kinds and wire layout --------------------------------------------------------------------


def test_strategies_cover_every_message_type() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES.values())


def test_kind_numbers_are_fixed() -> None:
    kinds = {cls.__name__: cls.KIND for cls in MESSAGE_TYPES.values()}
    assert kinds == {
        "Hello": 0,
        "HelloAck": 1,
        "Ping": 2,
        "Pong": 3,
        "GoAway": 4,
        "Request": 5,
        "Response": 6,
        "Data": 7,
        "WindowUpdate": 8,
        "Reset": 9,
        "Connect": 10,
        "ConnectAck": 11,
        "WebSocketOpen": 12,
        "WebSocketAck": 13,
        "WebSocketMessage": 14,
        "WebSocketClose": 15,
    }


# One example per kind with its msgpack array, exactly as docs/protocol.md lists the fields.
WIRE_EXAMPLES: list[tuple[Message, list[Any]]] = [
    (Hello(1, "agent", 65536, 262144, 1024), [0, 1, "agent", 65536, 262144, 1024]),
    (HelloAck(1, "server", 1024, 4096, 8), [1, 1, "server", 1024, 4096, 8]),
    (Ping(2**64 - 1), [2, 2**64 - 1]),
    (Pong(5), [3, 5]),
    (GoAway(7, 0, "bye"), [4, 7, 0, "bye"]),
    (
        Request(1, b"GET", b"http://e/", ((b"host", b"e"),), True),
        [5, 1, b"GET", b"http://e/", [[b"host", b"e"]], True],
    ),
    (Response(1, 404, b"Not Found", (), False), [6, 1, 404, b"Not Found", [], False]),
    (Data(3, True, b"hi"), [7, 3, True, b"hi"]),
    (WindowUpdate(3, 4096), [8, 3, 4096]),
    (Reset(3, 6, "refused"), [9, 3, 6, "refused"]),
    (Connect(5, "example.com", 443), [10, 5, "example.com", 443]),
    (ConnectAck(5, 502, "no route"), [11, 5, 502, "no route"]),
    (
        WebSocketOpen(7, "wss://e/ws", ((b"origin", b"x"),), ("chat", "v2")),
        [12, 7, "wss://e/ws", [[b"origin", b"x"]], ["chat", "v2"]],
    ),
    (WebSocketAck(7, 101, None, (), ""), [13, 7, 101, None, [], ""]),
    (WebSocketMessage(7, False, True, "é".encode()), [14, 7, False, True, "é".encode()]),
    (WebSocketClose(7, 1001, "going"), [15, 7, 1001, "going"]),
]


@pytest.mark.parametrize(("message", "wire"), WIRE_EXAMPLES, ids=lambda v: type(v).__name__)
def test_wire_layout(message: Message, wire: list[Any]) -> None:
    data = encode_bytes(message)
    assert LENGTH.unpack_from(data)[0] == len(data) - 4
    assert msgpack.unpackb(data[4:]) == wire
    # The encoding is plain canonical msgpack: any msgpack library can produce and read it.
    assert data == packed_frame(wire)
    assert decode_all(packed_frame(wire)) == [message]


def test_wire_examples_cover_every_kind() -> None:
    assert {type(m) for m, _ in WIRE_EXAMPLES} == set(MESSAGE_TYPES.values())


def test_golden_bytes() -> None:
    assert encode_bytes(Ping(7)) == b"\x00\x00\x00\x03\x92\x02\x07"
    assert encode_bytes(Data(1, True, b"hi")) == b"\x00\x00\x00\x08\x94\x07\x01\xc3\xc4\x02hi"
    assert (
        encode_bytes(WebSocketMessage(3, True, False, b""))
        == b"\x00\x00\x00\x07\x95\x0e\x03\xc3\xc2\xc4\x00"
    )


@pytest.mark.parametrize("cls", [Data, WebSocketMessage])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_payload_goes_last_and_is_not_copied(cls: type[Data | WebSocketMessage], size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    message = Data(9, False, payload) if cls is Data else WebSocketMessage(9, True, True, payload)
    buffers = encode(message)
    assert len(buffers) == 2
    assert buffers[1] is payload
    # Header plus payload is the same byte string msgpack itself produces (bin8/16/32).
    assert b"".join(buffers) == packed_frame([message.KIND, *message.to_wire()])
    assert decode_all(b"".join(buffers), max_data_size=max(size, 1024)) == [message]


@pytest.mark.parametrize("cls", [Data, WebSocketMessage])
@pytest.mark.parametrize("max_data_size", [1024, DEFAULT_MAX_DATA_SIZE, 16 * 1024 * 1024])
def test_largest_payload_fits_the_envelope(
    cls: type[Data | WebSocketMessage], max_data_size: int
) -> None:
    payload = bytes(max_data_size)
    if cls is Data:
        message: Message = Data(MAX_STREAM_ID, True, payload)
    else:
        message = WebSocketMessage(MAX_STREAM_ID, True, True, payload)
    data = encode_bytes(message)
    assert len(data) - 4 <= max_data_size + FRAME_ENVELOPE
    assert decode_all(data, max_data_size) == [message]


def test_non_payload_messages_use_one_buffer() -> None:
    assert len(encode(Ping(1))) == 1
    assert len(encode(Request(1, b"GET", b"http://e/"))) == 1


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda cls: cls.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_round_trip_every_type(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(MESSAGES[cls])
    encoded = encode_bytes(message)
    assert decode_all(encoded) == [message]
    assert type(decode_all(encoded)[0]) is cls
    # Re-encoding the decoded message gives the same bytes.
    assert encode_bytes(decode_all(encoded)[0]) == encoded


@settings(max_examples=150)
@given(st.lists(any_message, min_size=1, max_size=6))
def test_one_byte_at_a_time(messages: list[Message]) -> None:
    frames = [encode_bytes(m) for m in messages]
    ends = list(itertools.accumulate(len(f) for f in frames))
    stream = b"".join(frames)
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        out.extend(iter(decoder.next_message, None))
        # A message comes out exactly when its last byte has arrived, not before.
        assert len(out) == bisect.bisect_right(ends, i + 1)
    assert out == messages
    assert decoder.buffered == 0


@settings(max_examples=150)
@given(st.lists(any_message, max_size=30), st.data())
def test_arbitrary_chunking(messages: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode_bytes(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[Message] = []
    for start, end in itertools.pairwise([0, *cuts, len(stream)]):
        decoder.receive_data(stream[start:end])
        out.extend(iter(decoder.next_message, None))
    assert out == messages


@settings(max_examples=100)
@given(st.lists(any_message, min_size=1, max_size=40))
def test_many_frames_in_one_chunk(messages: list[Message]) -> None:
    assert decode_all(b"".join(encode_bytes(m) for m in messages)) == messages


def test_large_stream_through_the_buffer() -> None:
    """Megabytes through one decoder, in odd-sized chunks, with the buffer compacted on the way."""
    messages = [
        Data(2 * i + 1, i % 2 == 0, bytes([i % 256]) * (i * 37 % 3000)) for i in range(1000)
    ] + [Ping(i) for i in range(500)]
    stream = b"".join(encode_bytes(m) for m in messages)
    assert len(stream) > 1_000_000
    decoder = FrameDecoder()
    out: list[Message] = []
    for start in range(0, len(stream), 7919):
        decoder.receive_data(stream[start : start + 7919])
        out.extend(iter(decoder.next_message, None))
        assert decoder.buffered < 7919 + 3100  # at most one partial frame plus the new chunk
    assert out == messages
    assert decoder.buffered == 0


@settings(max_examples=100)
@given(any_message, st.data())
def test_truncated_frame_waits_for_more(message: Message, data: st.DataObject) -> None:
    encoded = encode_bytes(message)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decoder = FrameDecoder()
    decoder.receive_data(encoded[:cut])
    assert decoder.next_message() is None
    assert decoder.buffered == cut
    decoder.receive_data(encoded[cut:])
    assert decoder.next_message() == message


@settings(max_examples=100)
@given(any_message, st.data())
def test_length_prefix_shorter_than_the_body_is_rejected(
    message: Message, data: st.DataObject
) -> None:
    body = encode_bytes(message)[4:]
    length = data.draw(st.integers(1, len(body) - 1))
    decoder = FrameDecoder()
    decoder.receive_data(LENGTH.pack(length) + body)
    with pytest.raises(LinkProtocolError) as info:
        decoder.next_message()
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


# -- hostile input ----------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    decode_hostile(data, max_data_size=1024)


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=60), max_size=4))
def test_random_bodies_raise_only_protocol_errors(bodies: list[bytes]) -> None:
    """Correct length prefixes around random bodies: the msgpack layer sees the junk."""
    decode_hostile(b"".join(frame(b) for b in bodies))


@settings(max_examples=200)
@given(values)
def test_random_msgpack_value_as_frame(value: object) -> None:
    data = packed_frame(value)
    for message in decode_hostile(data):
        assert encode_bytes(message) == data


@settings(max_examples=200)
@given(st.integers(-2, 17) | values, st.lists(values, max_size=6))
def test_random_fields_are_validated(kind: object, fields: list[object]) -> None:
    """Whatever the decoder accepts re-encodes to the very same bytes: nothing is coerced."""
    data = packed_frame([kind, *fields])
    for message in decode_hostile(data):
        assert encode_bytes(message) == data


@settings(max_examples=200)
@given(any_message, st.data())
def test_one_mutated_field(message: Message, data: st.DataObject) -> None:
    wire = [message.KIND, *message.to_wire()]
    index = data.draw(st.integers(1, len(wire) - 1))
    wire[index] = data.draw(values)
    encoded = packed_frame(wire)
    for decoded in decode_hostile(encoded):
        assert type(decoded) is type(message)
        assert encode_bytes(decoded) == encoded


@pytest.mark.parametrize("max_data_size", [1024, DEFAULT_MAX_DATA_SIZE])
def test_oversized_frame_rejected_on_its_length_prefix(max_data_size: int) -> None:
    decoder = FrameDecoder(max_data_size)
    assert decoder.max_frame_size == max_data_size + FRAME_ENVELOPE
    prefix = LENGTH.pack((max_data_size + FRAME_ENVELOPE) * SKIP_FACTOR + 1)
    decoder.receive_data(prefix[:3])
    assert decoder.next_message() is None
    with pytest.raises(LinkProtocolError) as info:
        decoder.receive_data(prefix[3:])  # no body byte has been sent
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert decoder.buffered == 4


@settings(max_examples=100)
@given(st.integers((1024 + FRAME_ENVELOPE) * SKIP_FACTOR + 1, 2**32 - 1))
def test_any_length_past_the_skip_limit_is_rejected_on_its_prefix(length: int) -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(LinkProtocolError) as info:
        decoder.receive_data(LENGTH.pack(length))
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR


@settings(max_examples=100)
@given(st.integers(1024 + FRAME_ENVELOPE + 1, (1024 + FRAME_ENVELOPE) * SKIP_FACTOR))
def test_an_oversized_frame_that_is_not_a_head_fails_the_link(length: int) -> None:
    decoder = FrameDecoder(1024)
    body = encode_bytes(Data(1, False, b"x" * 2000))[4:]
    decoder.receive_data(LENGTH.pack(length) + body[:7])
    assert decoder.next_message() is None  # the kind is not known yet
    decoder.receive_data(body[7:8])
    with pytest.raises(LinkProtocolError) as info:
        decoder.next_message()
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR


@pytest.mark.parametrize("chunk", [1, 7, 1000, 10**6])
def test_an_oversized_head_is_skipped_unbuffered_and_reported(chunk: int) -> None:
    decoder = FrameDecoder(1024)
    head = Response(5, 200, b"OK", [(b"x-big", b"a" * 5000)], False)
    data = encode_bytes(head) + encode_bytes(Ping(1)) + encode_bytes(Data(5, True, b"tail"))
    events: list[object] = []
    most_buffered = 0
    for start in range(0, len(data), chunk):
        decoder.receive_data(data[start : start + chunk])
        most_buffered = max(most_buffered, decoder.buffered)
        while (event := decoder.next_message()) is not None:
            events.append(event)
    size = len(encode_bytes(head)) - 4
    assert events == [OversizedHead(Response.KIND, 5, size), Ping(1), Data(5, True, b"tail")]
    if chunk < 1000:
        assert most_buffered < 1024  # the skipped body never sat in the buffer


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    limit = 1024 + FRAME_ENVELOPE
    header_len = len(encode(Data(1, False, bytes(1024)))[0]) - 4  # bin16 header up to 64 KiB
    message = Data(1, False, bytes(limit - header_len))
    data = encode_bytes(message)
    assert len(data) - 4 == limit
    decoder = FrameDecoder(1024)
    decoder.receive_data(data[:4])  # the prefix alone is fine
    decoder.receive_data(data[4:])
    assert decoder.next_message() == message


def test_oversized_frame_after_good_frames_in_the_same_chunk() -> None:
    decoder = FrameDecoder(1024)
    decoder.receive_data(encode_bytes(Ping(1)) + encode_bytes(Ping(2)) + LENGTH.pack(10**6))
    assert decoder.next_message() == Ping(1)
    assert decoder.next_message() == Ping(2)
    with pytest.raises(LinkProtocolError) as info:
        decoder.next_message()
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR


def test_empty_frame_is_rejected() -> None:
    decoder = FrameDecoder()
    with pytest.raises(LinkProtocolError) as info:
        decoder.receive_data(LENGTH.pack(0))
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


def _with_raw_field(kind: int, before: list[object], raw: bytes, after: list[object]) -> bytes:
    """A frame [kind, *before, <raw msgpack bytes>, *after], for encodings msgpack won't emit."""
    count = 2 + len(before) + len(after)
    head = msgpack.packb([kind, *before])[1:]
    body = bytes((0x90 + count,)) + head + raw + b"".join(msgpack.packb(v) for v in after)
    return frame(body)


BAD_FRAMES: dict[str, bytes] = {
    # ext types, including the timestamp extension and an empty ext
    "ext as the frame": packed_frame(msgpack.ExtType(1, b"xy")),
    "ext as a field": packed_frame([2, msgpack.ExtType(1, b"\x07")]),
    "empty ext as a field": packed_frame([10, 1, msgpack.ExtType(5, b""), 443]),
    "timestamp as a field": packed_frame([2, msgpack.Timestamp(1, 0)]),
    "ext as the kind": packed_frame([msgpack.ExtType(2, b"\x00"), 1]),
    # maps
    "map as the frame": packed_frame({"kind": 2, "opaque": 1}),
    "empty map as the frame": packed_frame({}),
    "map as a field": packed_frame([4, 0, 0, {"a": "b"}]),
    "empty map as a field": packed_frame([4, 0, 0, {}]),
    "map as the header list": packed_frame([5, 1, b"GET", b"/", {"a": "b"}, False]),
    "map as a header pair": packed_frame([5, 1, b"GET", b"/", [{"a": "b"}], False]),
    # not a non-empty array
    "integer frame": packed_frame(7),
    "bytes frame": packed_frame(b"\x92\x02\x01"),
    "empty array": packed_frame([]),
    "nil frame": packed_frame(None),
    "trailing bytes": frame(msgpack.packb([2, 1]) + b"\xc0"),
    "deep nesting": frame(b"\x91" * 5000 + b"\x07"),
    "array too long": packed_frame([5, 1, b"GET", b"/", [[b"a", b"b"]] * 1025, False]),
    "bin length beyond the frame": frame(b"\x94\x07\x01\xc3\xc5\xff\xff"),
    # unknown or mistyped kinds
    "kind 16": packed_frame([16, 1]),
    "kind 255": packed_frame([255]),
    "kind -1": packed_frame([-1, 1]),
    "kind as str": packed_frame(["7", 1, True, b""]),
    "kind as float": packed_frame([7.0, 1, True, b""]),
    "kind as bool": packed_frame([True, 1]),
    "kind as bytes": packed_frame([b"\x02", 1]),
    # field counts
    "too few fields": packed_frame([7, 1, True]),
    "too many fields": packed_frame([2, 1, 2]),
    "no fields": packed_frame([9]),
    # wrong field types
    "str for bytes": packed_frame([5, 1, "GET", b"/", [], False]),
    "bytes for str": packed_frame([10, 1, b"example.com", 443]),
    "int for bool": packed_frame([7, 1, 1, b"x"]),
    "nil for bool": packed_frame([7, 1, None, b"x"]),
    "bool for int": packed_frame([2, True]),
    "float for int": packed_frame([8, 1, 1.0]),
    "str for int": packed_frame([8, 1, "1"]),
    "nil for str": packed_frame([4, 0, 0, None]),
    "str for payload": packed_frame([7, 1, False, "text"]),
    "header pair of three": packed_frame([5, 1, b"GET", b"/", [[b"a", b"b", b"c"]], False]),
    "header pair of one": packed_frame([5, 1, b"GET", b"/", [[b"a"]], False]),
    "str header name": packed_frame([5, 1, b"GET", b"/", [["a", b"b"]], False]),
    "too many headers": packed_frame([5, 1, b"GET", b"/", [[b"a", b"b"]] * 513, False]),
    "bytes subprotocol": packed_frame([12, 1, "ws://e/", [], [b"chat"]]),
    "too many subprotocols": packed_frame([12, 1, "ws://e/", [], ["p"] * 65]),
    # out-of-range integers
    "negative stream id": packed_frame([8, -1, 1]),
    "stream id 2**31": packed_frame([8, 2**31, 1]),
    "status 1000": packed_frame([6, 1, 1000, b"", [], False]),
    "port 65536": packed_frame([10, 1, "e", 65536]),
    "close code 65536": packed_frame([15, 1, 65536, ""]),
    "window increment 2**32": packed_frame([8, 1, 2**32]),
    "negative ping": packed_frame([2, -1]),
    "hello version 2**32": packed_frame([0, 2**32, "a", 1024, 1024, 1]),
    # invalid UTF-8 in str fields
    "invalid utf-8": _with_raw_field(10, [1], b"\xa2\xff\xfe", [443]),
    "utf-8 surrogate": _with_raw_field(10, [1], b"\xa3\xed\xa0\x80", [443]),
    "truncated utf-8": _with_raw_field(4, [0, 0], b"\xa1\xc3", []),
}


@pytest.mark.parametrize("data", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_bad_frames_are_link_errors(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)  # the length prefix is fine
    with pytest.raises(LinkProtocolError) as info:
        decoder.next_message()
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


def test_arrays_beyond_1024_items_are_refused_while_unpacking() -> None:
    """The unpacker's own limits bound memory before any field is looked at."""
    decoder = FrameDecoder()
    decoder.receive_data(packed_frame([2, *range(1024)]))
    with pytest.raises(LinkProtocolError) as info:
        decoder.next_message()
    assert "undecodable" in str(info.value)
    decoder = FrameDecoder()
    decoder.receive_data(packed_frame([2, *range(1023)]))
    with pytest.raises(LinkProtocolError) as info:
        decoder.next_message()
    assert "expected 1 fields" in str(info.value)  # got past the unpacker


def test_good_frames_next_to_bad_ones_are_well_formed() -> None:
    """The table above is not passing by accident: the same shapes, corrected, decode."""
    assert decode_all(packed_frame([10, 1, "example.com", 443])) == [Connect(1, "example.com", 443)]
    assert decode_all(_with_raw_field(10, [1], b"\xa2\xc3\xa9", [443])) == [Connect(1, "é", 443)]
    assert decode_all(packed_frame([12, 1, "ws://e/", [], ["p"] * 64])) == [
        WebSocketOpen(1, "ws://e/", (), ("p",) * 64)
    ]
    assert decode_all(packed_frame([5, 1, b"GET", b"/", [[b"a", b"b"]] * 512, False])) == [
        Request(1, b"GET", b"/", ((b"a", b"b"),) * 512, False)
    ]
    assert decode_all(packed_frame([8, MAX_STREAM_ID, 2**32 - 1])) == [
        WindowUpdate(MAX_STREAM_ID, 2**32 - 1)
    ]
    assert decode_all(packed_frame([13, 1, 101, "chat", [], ""])) == [WebSocketAck(1, 101, "chat")]


def test_unknown_error_codes_are_kept_as_ints() -> None:
    [reset] = decode_all(packed_frame([9, 1, 4242, "future"]))
    assert reset == Reset(1, 4242, "future")
    assert ErrorCode.parse(4242) == 4242
    assert ErrorCode.parse(6) is ErrorCode.REFUSED_STREAM


def test_an_unknown_kind_is_not_echoed_whole() -> None:
    decoder = FrameDecoder()
    body = msgpack.packb(["k" * 60_000, 1])
    decoder.receive_data(LENGTH.pack(len(body)) + body)
    with pytest.raises(LinkProtocolError) as info:
        decoder.next_message()
    assert "unknown frame kind 'kkk" in str(info.value)
    assert len(str(info.value)) < 80
