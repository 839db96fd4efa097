"""Playbooks for the link state machine: an agent and a server `Connection` wired together.

`link` (see helpers.py) moves each side's output to the other side's input; `link.inject`
feeds raw frames as if the peer had sent them, to play a peer that breaks the rules.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.protocol import (
    PROTOCOL_VERSION,
    Connect,
    ConnectAck,
    Connection,
    Data,
    ErrorCode,
    FrameDecoder,
    GoAway,
    Hello,
    HelloAck,
    LinkProtocolError,
    LinkState,
    LocalProtocolError,
    Message,
    Ping,
    Pong,
    Request,
    Reset,
    Response,
    Role,
    Settings,
    StreamKind,
    StreamProtocolError,
    WebSocketAck,
    WebSocketClose,
    WebSocketMessage,
    WebSocketOpen,
    WindowUpdate,
    encode,
    encode_bytes,
)
from fluidity.protocol.codec import LENGTH, SKIP_FACTOR

from .helpers import Link

GET = Request(1, b"GET", b"http://example.com/", ((b"accept", b"*/*"),), end_stream=True)


def get(sid: int) -> Request:
    return Request(sid, b"GET", b"http://example.com/", end_stream=True)


def post(sid: int) -> Request:
    return Request(sid, b"POST", b"http://example.com/upload")


def assert_link_failed(conn: Connection, code: ErrorCode, last_stream_id: int = 0) -> GoAway:
    """The connection is closed and has queued exactly one GoAway with `code`."""
    assert conn.state is LinkState.CLOSED
    [goaway] = _decode(b"".join(conn.data_to_send()))
    assert isinstance(goaway, GoAway)
    assert goaway.code == code
    assert goaway.last_stream_id == last_stream_id
    return goaway


def _decode(data: bytes) -> list[Message]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return list(iter(decoder.next_message, None))


# -- handshake --------------------------------------------------------------------------------


def test_handshake_exchanges_settings(new_link: type[Link]) -> None:
    agent_settings = Settings("laptop", max_data_size=2048, initial_window=8192, max_streams=3)
    server_settings = Settings("lambda", max_data_size=4096, initial_window=4096, max_streams=7)
    link = new_link(agent_settings, server_settings)
    assert link.agent.state is link.server.state is LinkState.HANDSHAKE
    link.agent.initiate()
    assert link.to_server() == [Hello(PROTOCOL_VERSION, "laptop", 2048, 8192, 3)]
    assert link.server.state is LinkState.OPEN
    assert link.to_agent() == [HelloAck(PROTOCOL_VERSION, "lambda", 4096, 4096, 7)]
    assert link.agent.state is LinkState.OPEN
    assert link.agent.peer_settings == server_settings
    assert link.server.peer_settings == agent_settings
    assert (link.agent.peer_name, link.server.peer_name) == ("lambda", "laptop")
    assert link.agent.max_send_data == 4096
    assert link.server.max_send_data == 2048


def test_initiate_is_for_the_agent_once() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER).initiate()
    agent = Connection(Role.AGENT)
    agent.initiate()
    with pytest.raises(LocalProtocolError):
        agent.initiate()
    assert [type(m) for m in _decode(b"".join(agent.data_to_send()))] == [Hello]


def test_version_mismatch_is_refused_with_goaway() -> None:
    agent, server = Connection(Role.AGENT), Connection(Role.SERVER)
    agent.initiate()
    agent.data_to_send()
    server.receive_data(encode_bytes(Hello(PROTOCOL_VERSION + 1, "future", 65536, 262144, 8)))
    with pytest.raises(LinkProtocolError) as info:
        server.next_event()
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    goaway_bytes = b"".join(server.data_to_send())
    [goaway] = _decode(goaway_bytes)  # a GoAway and no HelloAck
    assert isinstance(goaway, GoAway)
    assert goaway.code == ErrorCode.UNSUPPORTED_VERSION
    assert server.state is LinkState.CLOSED
    # The agent, still in its handshake, learns why.
    agent.receive_data(goaway_bytes)
    assert agent.next_event() == goaway
    assert agent.goaway_received == goaway
    assert agent.state is LinkState.HANDSHAKE


def test_agent_refuses_a_helloack_of_another_version() -> None:
    agent = Connection(Role.AGENT)
    agent.initiate()
    agent.data_to_send()
    agent.receive_data(encode_bytes(HelloAck(PROTOCOL_VERSION + 1, "s", 65536, 262144, 8)))
    with pytest.raises(LinkProtocolError) as info:
        agent.next_event()
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert_link_failed(agent, ErrorCode.UNSUPPORTED_VERSION)


@pytest.mark.parametrize(
    "message",
    [
        Ping(1),
        Pong(1),
        get(1),
        Data(1, True, b"x"),
        WindowUpdate(1, 10),
        Reset(1, 0),
        HelloAck(PROTOCOL_VERSION, "s", 65536, 262144, 8),
    ],
    ids=lambda m: type(m).__name__,
)
def test_server_rejects_anything_before_hello(message: Message) -> None:
    server = Connection(Role.SERVER)
    server.receive_data(encode_bytes(message))
    with pytest.raises(LinkProtocolError) as info:
        server.next_event()
    assert info.value.code is ErrorCode.PROTOCOL_ERROR
    assert_link_failed(server, ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "message",
    [Hello(PROTOCOL_VERSION, "a", 65536, 262144, 8), Ping(1), Response(1, 200)],
    ids=lambda m: type(m).__name__,
)
def test_agent_rejects_anything_but_helloack_first(message: Message) -> None:
    agent = Connection(Role.AGENT)
    agent.initiate()
    agent.data_to_send()
    agent.receive_data(encode_bytes(message))
    with pytest.raises(LinkProtocolError):
        agent.next_event()
    assert_link_failed(agent, ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("max_data_size", "initial_window", "max_streams"),
    [(1023, 65536, 8), (2**24 + 1, 2**25, 8), (4096, 2048, 8), (4096, 2**31, 8), (4096, 8192, 0)],
)
def test_unacceptable_hello_settings(
    max_data_size: int, initial_window: int, max_streams: int
) -> None:
    server = Connection(Role.SERVER)
    server.receive_data(
        encode_bytes(Hello(PROTOCOL_VERSION, "a", max_data_size, initial_window, max_streams))
    )
    with pytest.raises(LinkProtocolError):
        server.next_event()
    assert server.peer_settings is None
    assert_link_failed(server, ErrorCode.PROTOCOL_ERROR)


def test_second_hello_is_a_link_error(link: Link) -> None:
    link.inject(link.server, Hello(PROTOCOL_VERSION, "again", 65536, 262144, 8))
    with pytest.raises(LinkProtocolError):
        link.server.next_event()
    assert_link_failed(link.server, ErrorCode.PROTOCOL_ERROR)


def test_nothing_but_goaway_may_be_sent_before_the_handshake() -> None:
    agent = Connection(Role.AGENT)
    agent.initiate()
    assert not agent.can_open_stream()
    with pytest.raises(LocalProtocolError):
        agent.send(GET)
    with pytest.raises(LocalProtocolError):
        agent.send(Ping(1))
    with pytest.raises(LocalProtocolError):
        agent.max_send_data  # noqa: B018
    assert _decode(b"".join(agent.send(GoAway(0, ErrorCode.NO_ERROR)))) == [
        GoAway(0, ErrorCode.NO_ERROR)
    ]


@pytest.mark.parametrize(
    "message",
    [
        Hello(PROTOCOL_VERSION, "a", 65536, 262144, 8),
        HelloAck(PROTOCOL_VERSION, "a", 65536, 262144, 8),
        WindowUpdate(1, 100),
    ],
    ids=lambda m: type(m).__name__,
)
def test_frames_the_protocol_sends_itself_cannot_be_sent(link: Link, message: Message) -> None:
    for conn in (link.agent, link.server):
        with pytest.raises(LocalProtocolError):
            conn.send(message)


def test_ping_is_answered_by_the_protocol(link: Link) -> None:
    link.send(link.agent, Ping(42))
    assert link.to_server() == [Ping(42)]
    assert link.to_agent() == [Pong(42)]  # queued by the server's Connection itself
    link.send(link.server, Ping(2**64 - 1))
    assert link.to_agent() == [Ping(2**64 - 1)]
    assert link.to_server() == [Pong(2**64 - 1)]


def test_a_dead_connection_refuses_everything(link: Link) -> None:
    link.inject(link.server, Data(1, True, b"x"))  # stream 1 was never opened
    with pytest.raises(LinkProtocolError):
        link.server.next_event()
    goaway = assert_link_failed(link.server, ErrorCode.PROTOCOL_ERROR)
    assert "never opened" in goaway.reason
    with pytest.raises(LocalProtocolError):
        link.server.receive_data(encode_bytes(Ping(1)))
    with pytest.raises(LocalProtocolError):
        link.server.next_event()
    with pytest.raises(LocalProtocolError):
        link.server.send(Ping(1))


def test_a_frame_past_the_skip_limit_fails_the_link_at_once(link: Link) -> None:
    limit = link.server.local_settings.max_data_size + 64
    with pytest.raises(LinkProtocolError) as info:
        link.server.receive_data(LENGTH.pack(limit * SKIP_FACTOR + 1))
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert_link_failed(link.server, ErrorCode.FRAME_SIZE_ERROR)


def test_an_oversized_data_frame_fails_the_link(link: Link) -> None:
    link.send(link.agent, post(1))
    link.to_server()
    limit = link.server.local_settings.max_data_size
    link.inject(link.server, Data(1, False, bytes(limit + 100)))
    with pytest.raises(LinkProtocolError):
        link.server.next_event()
    assert_link_failed(link.server, ErrorCode.FRAME_SIZE_ERROR, last_stream_id=1)


def big(size: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-big", b"a" * size)]


def test_an_oversized_opening_costs_only_its_stream(link: Link) -> None:
    agent, server = link.agent, link.server
    link.send(agent, post(1))
    link.to_server()
    # A peer with another idea of the limit sends a 70 KB head (our send() would refuse it).
    link.inject(server, Request(3, b"GET", b"http://example.com/", big(70_000), True))
    with pytest.raises(StreamProtocolError) as info:
        server.next_event()
    assert info.value.stream_id == 3
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert server.highest_stream_id == 3  # seen: a reused id 3 stays a link error
    [reset] = _decode(b"".join(server.data_to_send()))
    assert reset == Reset(3, ErrorCode.FRAME_SIZE_ERROR, str(info.value))
    # Stream 1 and the link go on; a late frame for 3 is dropped.
    link.inject(server, Data(3, True, b"late"), Data(1, True, b"body"), get(5))
    assert list(server.events()) == [Data(1, True, b"body"), get(5)]
    assert server.state is LinkState.OPEN


def test_an_oversized_response_resets_its_stream_only(link: Link) -> None:
    agent, server = link.agent, link.server
    link.send(agent, get(1), get(3))
    link.to_server()
    link.inject(agent, Response(1, 200, b"OK", big(70_000), True))
    with pytest.raises(StreamProtocolError) as info:
        agent.next_event()
    assert info.value.stream_id == 1
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert 1 not in agent.streams
    [reset] = _decode(b"".join(agent.data_to_send()))
    assert isinstance(reset, Reset)
    assert reset.code == ErrorCode.FRAME_SIZE_ERROR
    link.send(server, Response(3, 200, b"OK", (), True))
    assert link.to_agent() == [Response(3, 200, b"OK", (), True)]


@pytest.mark.parametrize(
    ("receiver", "message"),
    [
        ("agent", Request(1, b"GET", b"http://e/", big(70_000), True)),  # the server opens
        ("server", Response(1, 200, b"OK", big(70_000), True)),  # the agent replies
        ("agent", Response(9, 200, b"OK", big(70_000), True)),  # never opened
    ],
)
def test_an_oversized_head_that_breaks_the_rules_fails_the_link(
    link: Link, receiver: str, message: Message
) -> None:
    link.send(link.agent, get(1))
    link.to_server()
    conn = link.agent if receiver == "agent" else link.server
    link.inject(conn, message)
    with pytest.raises(LinkProtocolError):
        conn.next_event()
    assert conn.state is LinkState.CLOSED


def test_an_oversized_hello_fails_the_link(new_link: type[Link]) -> None:
    link = new_link()
    link.inject(link.server, Response(1, 200, b"OK", big(70_000), True))
    with pytest.raises(LinkProtocolError) as info:
        link.server.next_event()
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR


def test_undecodable_frame_fails_the_link(link: Link) -> None:
    link.send(link.agent, get(1))
    link.to_server()
    link.server.receive_data(LENGTH.pack(2) + b"\x91\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(LinkProtocolError):
        link.server.next_event()
    # GoAway carries the highest stream id the server has seen.
    assert_link_failed(link.server, ErrorCode.PROTOCOL_ERROR, last_stream_id=1)


# -- request / response -----------------------------------------------------------------------


def test_request_and_response_with_bodies(link: Link) -> None:
    agent, server = link.agent, link.server
    assert agent.next_stream_id() == 1
    link.send(agent, post(1), Data(1, False, b"hello "), Data(1, True, b"world"))
    assert agent.streams[1].local_closed
    assert link.to_server() == [post(1), Data(1, False, b"hello "), Data(1, True, b"world")]
    assert server.streams[1].kind is StreamKind.REQUEST
    assert server.streams[1].remote_closed
    link.send(server, Response(1, 200, b"OK", ((b"content-length", b"4"),)))
    link.send(server, Data(1, False, b"bo"), Data(1, True, b"dy"))
    assert 1 not in server.streams  # closed both ways on the server
    assert link.to_agent() == [
        Response(1, 200, b"OK", ((b"content-length", b"4"),)),
        Data(1, False, b"bo"),
        Data(1, True, b"dy"),
    ]
    assert agent.streams == {}
    assert agent.next_stream_id() == 3


def test_request_without_body_and_bodyless_response(link: Link) -> None:
    link.send(link.agent, GET)
    assert link.to_server() == [GET]
    link.send(link.server, Response(1, 204, end_stream=True))
    assert link.server.streams == {}
    assert link.to_agent() == [Response(1, 204, end_stream=True)]
    assert link.agent.streams == {}


def test_response_may_end_before_the_request_body(link: Link) -> None:
    link.send(link.agent, post(1), Data(1, False, b"part"))
    link.to_server()
    link.send(link.server, Response(1, 413, end_stream=True))
    assert link.to_agent() == [Response(1, 413, end_stream=True)]
    link.send(link.agent, Data(1, True, b"rest"))  # the agent may still finish its side
    assert link.to_server() == [Data(1, True, b"rest")]
    assert link.agent.streams == link.server.streams == {}


def test_empty_data_ends_a_stream(link: Link) -> None:
    link.send(link.agent, post(1), Data(1, True, b""))
    assert link.to_server() == [post(1), Data(1, True, b"")]
    assert link.server.streams[1].remote_closed


def test_streams_are_multiplexed(link: Link) -> None:
    link.send(link.agent, post(1), post(3), Data(3, True, b"three"), Data(1, True, b"one"))
    assert link.to_server() == [post(1), post(3), Data(3, True, b"three"), Data(1, True, b"one")]
    link.send(link.server, Response(3, 200, end_stream=True), Response(1, 500, end_stream=True))
    assert link.to_agent() == [Response(3, 200, end_stream=True), Response(1, 500, end_stream=True)]
    assert link.agent.streams == link.server.streams == {}


def test_data_before_the_response_is_a_stream_error(link: Link) -> None:
    link.send(link.agent, GET, get(3))
    link.to_server()
    link.inject(link.agent, Data(1, False, b"early"))
    with pytest.raises(StreamProtocolError) as info:
        link.agent.next_event()
    assert info.value.stream_id == 1
    assert 1 not in link.agent.streams
    assert link.pending(link.agent) == [Reset(1, ErrorCode.PROTOCOL_ERROR, str(info.value))]
    # Stream 3 is unaffected.
    link.send(link.server, Response(3, 200, end_stream=True))
    assert link.to_agent() == [Response(3, 200, end_stream=True)]


# -- CONNECT ----------------------------------------------------------------------------------


def test_connect_success_then_tunnel_bytes(link: Link) -> None:
    agent, server = link.agent, link.server
    link.send(agent, Connect(1, "example.com", 443))
    with pytest.raises(LocalProtocolError):
        agent.send(Data(1, False, b"too early"))  # not before ConnectAck
    assert link.to_server() == [Connect(1, "example.com", 443)]
    assert server.streams[1].kind is StreamKind.CONNECT
    with pytest.raises(LocalProtocolError):
        server.send(Data(1, False, b"too early"))  # nor from the server
    link.send(server, ConnectAck(1, 200))
    [ack] = link.to_agent()
    assert ack == ConnectAck(1, 200)
    assert ack.success
    link.send(agent, Data(1, False, b"\x16\x03\x01"))
    link.send(server, Data(1, False, b"\x16\x03\x03"))
    assert link.to_server() == [Data(1, False, b"\x16\x03\x01")]
    assert link.to_agent() == [Data(1, False, b"\x16\x03\x03")]
    # Half-close each way, then the stream is gone on both sides.
    link.send(agent, Data(1, True, b""))
    link.send(server, Data(1, False, b"late"), Data(1, True, b""))
    assert link.to_server() == [Data(1, True, b"")]
    assert link.to_agent() == [Data(1, False, b"late"), Data(1, True, b"")]
    assert agent.streams == server.streams == {}


@pytest.mark.parametrize("status", [502, 504, 403])
def test_connect_failure_ends_the_stream(link: Link, status: int) -> None:
    link.send(link.agent, Connect(1, "unreachable.example", 22))
    link.to_server()
    link.send(link.server, ConnectAck(1, status, "nope"))
    assert link.server.streams == {}
    [ack] = link.to_agent()
    assert ack == ConnectAck(1, status, "nope")
    assert not ack.success
    assert link.agent.streams == {}
    with pytest.raises(LocalProtocolError):
        link.agent.send(Data(1, False, b"x"))
    assert link.agent.can_open_stream()
    assert link.agent.next_stream_id() == 3


def test_connect_data_before_the_ack_is_a_stream_error(link: Link) -> None:
    link.send(link.agent, Connect(1, "example.com", 443))
    link.to_server()
    link.inject(link.server, Data(1, False, b"x"))
    with pytest.raises(StreamProtocolError) as info:
        link.server.next_event()
    assert info.value.stream_id == 1
    assert [type(m) for m in link.pending(link.server)] == [Reset]
    assert link.server.streams == {}


# -- WebSocket --------------------------------------------------------------------------------


def test_websocket_open_ack_messages_close(link: Link) -> None:
    agent, server = link.agent, link.server
    open_ = WebSocketOpen(1, "wss://example.com/chat", ((b"origin", b"x"),), ("chat", "v2"))
    link.send(agent, open_)
    with pytest.raises(LocalProtocolError):
        agent.send(WebSocketMessage(1, False, True, b"too early"))
    with pytest.raises(LocalProtocolError):
        agent.send(WebSocketClose(1))
    assert link.to_server() == [open_]
    assert server.streams[1].kind is StreamKind.WEBSOCKET
    link.send(server, WebSocketAck(1, 101, "chat", ((b"x-extra", b"1"),)))
    [ack] = link.to_agent()
    assert ack.success
    assert ack.subprotocol == "chat"
    messages = [
        WebSocketMessage(1, False, False, b"hel"),
        WebSocketMessage(1, False, True, b"lo"),
        WebSocketMessage(1, True, True, b"\x00\x01"),
        WebSocketMessage(1, True, True, b""),
    ]
    link.send(agent, *messages)
    assert link.to_server() == messages
    link.send(server, WebSocketMessage(1, False, True, b"hi"))
    assert link.to_agent() == [WebSocketMessage(1, False, True, b"hi")]
    # The agent closes first; the server may still send until it closes too.
    link.send(agent, WebSocketClose(1, 1000, "bye"))
    with pytest.raises(LocalProtocolError):
        agent.send(WebSocketMessage(1, False, True, b"after close"))
    assert link.to_server() == [WebSocketClose(1, 1000, "bye")]
    link.send(server, WebSocketMessage(1, False, True, b"last"), WebSocketClose(1, 1000, "bye"))
    assert server.streams == {}
    assert link.to_agent() == [
        WebSocketMessage(1, False, True, b"last"),
        WebSocketClose(1, 1000, "bye"),
    ]
    assert agent.streams == {}


def test_websocket_refused(link: Link) -> None:
    link.send(link.agent, WebSocketOpen(1, "ws://example.com/"))
    link.to_server()
    link.send(link.server, WebSocketAck(1, 403, error="forbidden"))
    [ack] = link.to_agent()
    assert not ack.success
    assert ack.error == "forbidden"
    assert link.agent.streams == link.server.streams == {}


def test_websocket_message_before_the_ack_is_a_stream_error(link: Link) -> None:
    link.send(link.agent, WebSocketOpen(1, "ws://example.com/"))
    link.to_server()
    link.inject(link.server, WebSocketMessage(1, False, True, b"x"))
    with pytest.raises(StreamProtocolError):
        link.server.next_event()
    assert [type(m) for m in link.pending(link.server)] == [Reset]


@pytest.mark.parametrize(
    ("opening", "reply", "wrong"),
    [
        (post(1), Response(1, 200), WebSocketMessage(1, False, True, b"x")),
        (post(1), Response(1, 200), WebSocketClose(1)),
        (Connect(1, "e", 1), ConnectAck(1, 200), WebSocketMessage(1, False, True, b"x")),
        (Connect(1, "e", 1), ConnectAck(1, 200), WebSocketClose(1)),
        (WebSocketOpen(1, "ws://e/"), WebSocketAck(1, 101), Data(1, False, b"x")),
    ],
    ids=["ws-on-request", "close-on-request", "ws-on-connect", "close-on-connect", "data-on-ws"],
)
def test_frames_of_the_wrong_stream_kind(
    link: Link, opening: Message, reply: Message, wrong: Message
) -> None:
    link.send(link.agent, opening)
    link.to_server()
    link.send(link.server, reply)
    link.to_agent()
    for conn in (link.agent, link.server):
        with pytest.raises(LocalProtocolError):
            conn.send(wrong)
    link.inject(link.server, wrong)
    with pytest.raises(StreamProtocolError) as info:
        link.server.next_event()
    assert info.value.stream_id == 1
    assert link.server.streams == {}


@pytest.mark.parametrize(
    ("opening", "wrong_reply"),
    [
        (post(1), ConnectAck(1, 200)),
        (post(1), WebSocketAck(1, 101)),
        (Connect(1, "e", 1), Response(1, 200)),
        (WebSocketOpen(1, "ws://e/"), ConnectAck(1, 200)),
    ],
    ids=["connectack-on-request", "wsack-on-request", "response-on-connect", "connectack-on-ws"],
)
def test_reply_of_the_wrong_kind(link: Link, opening: Message, wrong_reply: Message) -> None:
    link.send(link.agent, opening)
    link.to_server()
    with pytest.raises(LocalProtocolError):
        link.server.send(wrong_reply)
    link.inject(link.agent, wrong_reply)
    with pytest.raises(StreamProtocolError):
        link.agent.next_event()
    assert link.agent.streams == {}
    assert [type(m) for m in link.pending(link.agent)] == [Reset]


# -- stream ids -------------------------------------------------------------------------------


def test_agent_must_use_the_next_odd_id(link: Link) -> None:
    with pytest.raises(LocalProtocolError):
        link.agent.send(get(3))
    with pytest.raises(LocalProtocolError):
        link.agent.send(get(2))
    for sid in (1, 3, 5):
        assert link.agent.next_stream_id() == sid
        link.send(link.agent, get(sid))
    with pytest.raises(LocalProtocolError):
        link.agent.send(get(5))
    assert [m.stream_id for m in link.to_server()] == [1, 3, 5]


@pytest.mark.parametrize(
    "openings",
    [
        [get(1), get(1)],
        [get(1), get(5), get(3)],
        [get(1), Connect(1, "e", 1)],
        [get(2)],
        [get(1), get(4)],
        [get(0)],
    ],
    ids=["reuse", "decreasing", "reuse-other-kind", "even", "even-after-odd", "zero"],
)
def test_server_rejects_reused_and_even_ids(link: Link, openings: list[Message]) -> None:
    link.inject(link.server, *openings)
    with pytest.raises(LinkProtocolError):
        list(link.server.events())
    assert link.server.state is LinkState.CLOSED


NEVER_OPENED = [
    Data(5, True, b"x"),
    WindowUpdate(7, 1),
    Reset(5, 0),
    Data(2, True, b"x"),
    Reset(0, 0),
]
NEVER_OPENED_IDS = ["data-above", "window-above", "reset-above", "even-below", "zero"]


@pytest.mark.parametrize("message", NEVER_OPENED, ids=NEVER_OPENED_IDS)
def test_server_rejects_frames_on_never_opened_streams(link: Link, message: Message) -> None:
    link.send(link.agent, post(1), post(3))
    link.to_server()
    link.inject(link.server, message)
    with pytest.raises(LinkProtocolError) as info:
        link.server.next_event()
    assert "never opened" in str(info.value)
    assert_link_failed(link.server, ErrorCode.PROTOCOL_ERROR, last_stream_id=3)


@pytest.mark.parametrize(
    "message", [*NEVER_OPENED, Response(5, 200)], ids=[*NEVER_OPENED_IDS, "reply-above"]
)
def test_agent_rejects_frames_on_never_opened_streams(link: Link, message: Message) -> None:
    link.send(link.agent, post(1), post(3))
    link.to_server()
    link.inject(link.agent, message)
    with pytest.raises(LinkProtocolError) as info:
        link.agent.next_event()
    assert "never opened" in str(info.value)
    assert_link_failed(link.agent, ErrorCode.PROTOCOL_ERROR, last_stream_id=3)


@pytest.mark.parametrize("opening", [get(1), get(2), Connect(1, "e", 1), WebSocketOpen(1, "ws:/")])
def test_server_may_not_open_streams(link: Link, opening: Message) -> None:
    with pytest.raises(LocalProtocolError):
        link.server.send(opening)
    assert not link.server.can_open_stream()
    link.inject(link.agent, opening)
    with pytest.raises(LinkProtocolError) as info:
        link.agent.next_event()
    assert "server may not open" in str(info.value)
    assert_link_failed(link.agent, ErrorCode.PROTOCOL_ERROR)


def test_frames_on_closed_streams_are_dropped(link: Link) -> None:
    agent, server = link.agent, link.server
    link.send(agent, GET)
    link.to_server()
    link.send(server, Response(1, 200, end_stream=True))
    link.to_agent()
    assert agent.streams == server.streams == {}
    late = [Data(1, True, b"x"), WindowUpdate(1, 5), Reset(1, 0), WebSocketClose(1)]
    link.inject(server, *late)
    assert list(server.events()) == []
    link.inject(agent, *late, Response(1, 200), ConnectAck(1, 200))
    assert list(agent.events()) == []
    assert server.data_to_send() == []
    assert agent.data_to_send() == []
    assert agent.state is server.state is LinkState.OPEN
    # The link goes on.
    link.send(agent, get(3))
    assert link.to_server() == [get(3)]


def test_frames_after_a_local_reset_are_dropped(link: Link) -> None:
    link.send(link.agent, post(1), Data(1, False, b"x"))
    link.to_server()
    link.send(link.server, Response(1, 200), Data(1, False, b"in flight"))
    link.send(link.agent, Reset(1, ErrorCode.CANCEL))
    assert link.agent.streams == {}
    assert link.to_agent() == []  # the response crossed the Reset on the wire
    assert link.to_server() == [Reset(1, ErrorCode.CANCEL)]
    assert link.server.streams == {}
    # Resetting again, or a stream that already ended, is harmless.
    assert _decode(b"".join(link.agent.send(Reset(1, ErrorCode.CANCEL)))) == [
        Reset(1, ErrorCode.CANCEL)
    ]


def test_reset_from_the_peer_ends_the_stream(link: Link) -> None:
    link.send(link.agent, post(1))
    link.to_server()
    link.send(link.server, Reset(1, ErrorCode.UPSTREAM_ERROR, "origin down"))
    assert link.server.streams == {}
    assert link.to_agent() == [Reset(1, ErrorCode.UPSTREAM_ERROR, "origin down")]
    assert link.agent.streams == {}
    with pytest.raises(LocalProtocolError):
        link.agent.send(Data(1, True, b"x"))


# -- stream errors leave the link usable ------------------------------------------------------


def test_data_after_end_stream_resets_only_that_stream(link: Link) -> None:
    agent, server = link.agent, link.server
    link.send(agent, post(1), post(3), Data(1, True, b"done"))
    link.to_server()
    link.inject(server, Data(1, False, b"more"), Data(3, False, b"three"))
    with pytest.raises(StreamProtocolError) as info:
        server.next_event()
    assert info.value.stream_id == 1
    assert info.value.code is ErrorCode.STREAM_CLOSED
    assert 1 not in server.streams
    assert server.state is LinkState.OPEN
    # The next frame, already buffered, is still delivered.
    assert list(server.events()) == [Data(3, False, b"three")]
    # The Reset reaches the agent, which drops the stream; stream 3 keeps working.
    [reset] = link.to_agent()
    assert reset == Reset(1, ErrorCode.STREAM_CLOSED, str(info.value))
    assert 1 not in agent.streams
    link.send(server, Response(3, 200), Data(3, True, b"ok"))
    assert link.to_agent() == [Response(3, 200), Data(3, True, b"ok")]
    link.send(agent, Data(3, True, b""))
    assert link.to_server() == [Data(3, True, b"")]


def test_frames_after_websocket_close_reset_the_stream(link: Link) -> None:
    link.send(link.agent, WebSocketOpen(1, "ws://e/"))
    link.to_server()
    link.send(link.server, WebSocketAck(1, 101))
    link.to_agent()
    link.send(link.agent, WebSocketClose(1))
    link.to_server()
    link.inject(link.server, WebSocketMessage(1, False, True, b"x"))
    with pytest.raises(StreamProtocolError) as info:
        link.server.next_event()
    assert info.value.code is ErrorCode.STREAM_CLOSED


def test_reply_twice_is_a_stream_error(link: Link) -> None:
    link.send(link.agent, post(1))
    link.to_server()
    link.send(link.server, Response(1, 200))
    link.to_agent()
    link.inject(link.agent, Response(1, 200))
    with pytest.raises(StreamProtocolError):
        link.agent.next_event()
    assert link.agent.streams == {}


def test_empty_data_without_end_stream_is_a_stream_error(link: Link) -> None:
    link.send(link.agent, post(1))
    link.to_server()
    link.inject(link.server, Data(1, False, b""))
    with pytest.raises(StreamProtocolError):
        link.server.next_event()
    assert link.server.streams == {}


@pytest.mark.parametrize(
    "reply", [Response(1, 200), ConnectAck(1, 200), WebSocketAck(1, 101)], ids=repr
)
def test_agent_sending_a_reply_is_a_link_error(link: Link, reply: Message) -> None:
    link.send(link.agent, get(1))
    link.to_server()
    link.inject(link.server, reply)
    with pytest.raises(LinkProtocolError):
        link.server.next_event()
    assert link.server.state is LinkState.CLOSED


# -- stream limit -----------------------------------------------------------------------------


def test_agent_respects_the_servers_stream_limit(open_link: Callable[..., Link]) -> None:
    link = open_link(server=Settings(max_streams=2))
    link.send(link.agent, post(1), post(3))
    assert not link.agent.can_open_stream()
    with pytest.raises(LocalProtocolError):
        link.agent.send(post(5))
    link.to_server()
    link.send(link.agent, Data(1, True, b""))
    link.to_server()
    link.send(link.server, Response(1, 200, end_stream=True))
    link.to_agent()
    assert link.agent.can_open_stream()
    link.send(link.agent, post(5))
    assert link.to_server() == [post(5)]


def test_server_refuses_streams_beyond_its_limit(open_link: Callable[..., Link]) -> None:
    link = open_link(server=Settings(max_streams=2))
    link.inject(link.server, post(1), post(3), post(5), Data(5, False, b"x"), post(7))
    # Streams 5 and 7 are refused: no event, a Reset each; frames for them are dropped.
    assert list(link.server.events()) == [post(1), post(3)]
    assert sorted(link.server.streams) == [1, 3]
    assert link.server.highest_stream_id == 7
    refused = link.pending(link.server)
    assert [(r.stream_id, r.code) for r in refused] == [
        (5, ErrorCode.REFUSED_STREAM),
        (7, ErrorCode.REFUSED_STREAM),
    ]
    # Once a stream ends there is room again.
    link.send(link.server, Response(1, 200, end_stream=True))
    link.inject(link.server, Data(1, True, b""), post(9))
    assert list(link.server.events()) == [Data(1, True, b""), post(9)]
    assert sorted(link.server.streams) == [3, 9]


def test_refused_stream_reaches_the_agent_as_reset(link: Link) -> None:
    link.send(link.server, GoAway(0, ErrorCode.NO_ERROR))  # not yet seen by the agent
    link.send(link.agent, get(1))
    assert link.to_server() == []
    [goaway, reset] = link.to_agent()
    assert goaway == GoAway(0, ErrorCode.NO_ERROR)
    assert isinstance(reset, Reset)
    assert reset.code == ErrorCode.REFUSED_STREAM
    assert link.agent.streams == {}


# -- GoAway -----------------------------------------------------------------------------------


def test_goaway_from_the_server_lets_open_streams_finish(link: Link) -> None:
    agent, server = link.agent, link.server
    link.send(agent, post(1))
    link.to_server()
    link.send(server, GoAway(1, ErrorCode.NO_ERROR, "shutting down"))
    assert server.goaway_sent == GoAway(1, ErrorCode.NO_ERROR, "shutting down")
    assert link.to_agent() == [GoAway(1, ErrorCode.NO_ERROR, "shutting down")]
    assert agent.goaway_received == GoAway(1, ErrorCode.NO_ERROR, "shutting down")
    assert not agent.can_open_stream()
    with pytest.raises(LocalProtocolError):
        agent.send(get(3))
    # Stream 1 still runs to its end.
    link.send(agent, Data(1, True, b"body"))
    assert link.to_server() == [Data(1, True, b"body")]
    link.send(server, Response(1, 200, end_stream=True))
    assert link.to_agent() == [Response(1, 200, end_stream=True)]
    assert agent.streams == server.streams == {}


def test_server_refuses_new_streams_after_its_goaway(link: Link) -> None:
    link.send(link.server, GoAway(0, ErrorCode.NO_ERROR))
    link.inject(link.server, get(1), Data(1, True, b"x"), get(3))
    assert list(link.server.events()) == []
    assert link.server.streams == {}
    [goaway, *refused] = link.pending(link.server)
    assert goaway == GoAway(0, ErrorCode.NO_ERROR)
    assert [(r.stream_id, r.code) for r in refused] == [
        (1, ErrorCode.REFUSED_STREAM),
        (3, ErrorCode.REFUSED_STREAM),
    ]


def test_agent_cannot_open_streams_after_its_own_goaway(link: Link) -> None:
    link.send(link.agent, GoAway(0, ErrorCode.NO_ERROR))
    assert not link.agent.can_open_stream()
    with pytest.raises(LocalProtocolError):
        link.agent.send(get(1))
    assert link.to_server() == [GoAway(0, ErrorCode.NO_ERROR)]
    assert link.server.goaway_received == GoAway(0, ErrorCode.NO_ERROR)


# -- local misuse -----------------------------------------------------------------------------


def test_local_misuse_is_refused_without_changing_state(link: Link) -> None:
    agent, server = link.agent, link.server
    link.send(agent, post(1), get(3))
    link.to_server()
    with pytest.raises(LocalProtocolError):
        agent.send(Response(1, 200))  # the agent never replies
    with pytest.raises(LocalProtocolError):
        server.send(Data(1, False, b"x"))  # the server replies first
    link.send(server, Response(1, 200))
    with pytest.raises(LocalProtocolError):
        server.send(Response(1, 200))  # once
    with pytest.raises(LocalProtocolError):
        agent.send(Data(3, False, b"x"))  # stream 3's request ended with its head
    with pytest.raises(LocalProtocolError):
        agent.send(Data(1, False, b""))  # empty Data needs end_stream
    with pytest.raises(LocalProtocolError):
        agent.send(Data(9, False, b"x"))  # no such stream
    with pytest.raises(LocalProtocolError):
        agent.send(Data(1, False, bytes(agent.max_send_data + 1)))  # above max_data_size
    link.send(server, Data(1, True, b"ok"))
    with pytest.raises(LocalProtocolError):
        server.send(Data(1, False, b"x"))  # after end_stream
    # None of the refused calls reached the wire or changed the streams.
    assert link.to_server() == []
    assert link.to_agent() == [Response(1, 200), Data(1, True, b"ok")]
    assert agent.streams[1].send_window == server.local_settings.initial_window
    link.send(agent, Data(1, True, b"fine"))
    assert link.to_server() == [Data(1, True, b"fine")]


def test_send_returns_the_frame(link: Link) -> None:
    buffers = link.agent.send(post(1))
    assert buffers == encode(post(1))
    assert link.agent.data_to_send() == []


def test_record_updates_the_state_like_send_but_encodes_nothing(link: Link) -> None:
    """An end folded into a queued Data frame: the state ends the stream, the wire carries
    only the frame the caller re-encodes."""
    link.send(link.agent, post(1))
    link.to_server()
    link.send(link.server, Response(1, 200))
    link.to_agent()
    server = link.server
    server.send(Data(1, False, b"body"))  # queued by the caller, not yet written
    server.record(Data(1, True, b""))
    assert server.data_to_send() == []
    assert server.streams[1].local_closed
    with pytest.raises(LocalProtocolError):
        server.record(Data(1, True, b""))  # checked like send: the side already ended
    link.agent.receive_data(b"".join(encode(Data(1, True, b"body"))))
    assert list(link.agent.events()) == [Data(1, True, b"body")]


AGENT_OPEN, AGENT_END, AGENT_RESET, SERVER_REPLY, SERVER_END, SERVER_RESET = range(6)
TO_SERVER, TO_AGENT = 6, 7


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3)), max_size=80))
def test_an_agent_within_the_limit_is_never_refused(
    open_link: Callable[..., Link], steps: list[tuple[int, int]]
) -> None:
    """Whatever the interleaving of opens, ends, resets and deliveries, the server's count of
    open streams never exceeds the agent's, so a REFUSED_STREAM never happens."""
    link = open_link(server=Settings(max_streams=2))
    agent, server = link.agent, link.server
    for action, pick in steps:
        a_streams = sorted(agent.streams)
        s_streams = sorted(server.streams)
        if action == AGENT_OPEN and agent.can_open_stream():
            link.send(
                agent, Request(agent.next_stream_id(), b"GET", b"/", end_stream=pick % 2 == 0)
            )
        elif action in (AGENT_END, AGENT_RESET) and a_streams:
            sid = a_streams[pick % len(a_streams)]
            if action == AGENT_RESET:
                link.send(agent, Reset(sid, ErrorCode.CANCEL))
            elif not agent.streams[sid].local_closed:
                link.send(agent, Data(sid, True, b""))
        elif action in (SERVER_REPLY, SERVER_END, SERVER_RESET) and s_streams:
            sid = s_streams[pick % len(s_streams)]
            stream = server.streams[sid]
            if action == SERVER_RESET:
                link.send(server, Reset(sid, ErrorCode.UPSTREAM_ERROR))
            elif not stream.replied:
                link.send(server, Response(sid, 200, end_stream=action == SERVER_END))
            elif not stream.local_closed:
                link.send(server, Data(sid, True, b""))
        elif action == TO_SERVER:
            link.to_server()
        elif action == TO_AGENT:
            for event in link.to_agent():
                assert not (isinstance(event, Reset) and event.code == ErrorCode.REFUSED_STREAM)
    link.to_server()
    refused = [m for m in link.pending(server) if isinstance(m, Reset)]
    assert all(r.code != ErrorCode.REFUSED_STREAM for r in refused)


# -- one table for both directions --------------------------------------------------------------

_OPENINGS = {
    StreamKind.REQUEST: Request(1, b"POST", b"http://example.com/"),
    StreamKind.CONNECT: Connect(1, "example.com", 443),
    StreamKind.WEBSOCKET: WebSocketOpen(1, "ws://example.com/", (), ()),
}
_REPLIES = {
    StreamKind.REQUEST: Response(1, 200, b"OK", (), False),
    StreamKind.CONNECT: ConnectAck(1, 200, ""),
    StreamKind.WEBSOCKET: WebSocketAck(1, 101, None, (), ""),
}
_FRAMES = [
    Response(1, 200, b"OK", (), False),
    ConnectAck(1, 200, ""),
    WebSocketAck(1, 101, None, (), ""),
    Data(1, False, b"x"),
    Data(1, False, b""),
    WebSocketMessage(1, True, True, b"x"),
    WebSocketClose(1, 1000, ""),
]


@pytest.mark.parametrize("kind", list(StreamKind))
@pytest.mark.parametrize("sender", ["agent", "server"])
@pytest.mark.parametrize("replied", [False, True])
@pytest.mark.parametrize("frame", _FRAMES, ids=lambda f: type(f).__name__)
def test_a_frame_a_side_may_not_send_is_one_its_peer_may_not_receive(
    kind: StreamKind, sender: str, replied: bool, frame: Message
) -> None:
    """Sending and receiving apply the same rules: refused on one side iff an error on the other."""

    def opened() -> Link:
        link = Link.open()
        link.send(link.agent, _OPENINGS[kind])
        link.to_server()
        if replied:
            link.send(link.server, _REPLIES[kind])
            link.to_agent()
        return link

    link = opened()
    conn = link.agent if sender == "agent" else link.server
    try:
        conn.send(frame)
        refused = False
    except LocalProtocolError:
        refused = True
    link = opened()
    peer = link.server if sender == "agent" else link.agent
    link.inject(peer, frame)
    try:
        peer.next_event()
        rejected = False
    except (StreamProtocolError, LinkProtocolError):
        rejected = True
    assert refused == rejected
