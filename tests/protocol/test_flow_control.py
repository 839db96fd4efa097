"""Per-stream flow control: send windows, WindowUpdate batching, and stall isolation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.protocol import (
    Connect,
    ConnectAck,
    Data,
    ErrorCode,
    LinkProtocolError,
    LinkState,
    LocalProtocolError,
    Request,
    Reset,
    Response,
    Settings,
    StreamProtocolError,
    WebSocketAck,
    WebSocketMessage,
    WebSocketOpen,
    WindowUpdate,
    flow_size,
)
from fluidity.protocol.messages import MAX_WINDOW

from .helpers import Link

WINDOW = 4096
CHUNK = 1024
SMALL = Settings(max_data_size=CHUNK, initial_window=WINDOW)


def post(sid: int) -> Request:
    return Request(sid, b"POST", b"http://example.com/upload")


@pytest.fixture
def small(open_link: Callable[..., Link]) -> Link:
    """A handshaken link where both sides allow 1 KiB frames and a 4 KiB window."""
    return open_link(SMALL, SMALL)


def upload(link: Link, sid: int = 1) -> None:
    """Open a request stream from the agent; the server has seen its head."""
    link.send(link.agent, post(sid))
    assert link.to_server() == [post(sid)]


def fill(link: Link, sid: int) -> int:
    """Send as much as the agent's window on `sid` allows; return the bytes sent."""
    sent = 0
    while (n := min(link.agent.send_window(sid), CHUNK)) > 0:
        link.send(link.agent, Data(sid, False, bytes(n)))
        sent += n
    return sent


def test_flow_size() -> None:
    assert flow_size(Data(1, False, b"abc")) == 3
    assert flow_size(Data(1, True, b"")) == 0
    assert flow_size(WebSocketMessage(1, True, True, b"abc")) == 3
    assert flow_size(WebSocketMessage(1, True, True, b"")) == 1


def test_windows_start_at_the_receivers_initial_window(open_link: Callable[..., Link]) -> None:
    link = open_link(Settings(initial_window=100_000), Settings(initial_window=70_000))
    upload(link)
    # Each side's send window is what the *other* side advertised.
    assert link.agent.send_window(1) == 70_000
    assert link.agent.streams[1].recv_window == 100_000
    assert link.server.streams[1].send_window == 100_000
    assert link.server.streams[1].recv_window == 70_000
    assert link.agent.send_window(99) == 0  # no such stream


def test_sending_beyond_the_window_is_a_local_error(small: Link) -> None:
    upload(small)
    assert fill(small, 1) == WINDOW
    assert small.agent.send_window(1) == 0
    with pytest.raises(LocalProtocolError):
        small.agent.send(Data(1, False, b"x"))
    # The refused call changed nothing, and an empty end_stream needs no credit.
    assert small.agent.send_window(1) == 0
    small.send(small.agent, Data(1, True, b""))
    frames = small.to_server()
    assert sum(len(f.data) for f in frames) == WINDOW
    assert frames[-1] == Data(1, True, b"")


def test_window_is_checked_before_it_is_spent(small: Link) -> None:
    upload(small)
    small.send(small.agent, Data(1, False, bytes(CHUNK)), Data(1, False, bytes(CHUNK)))
    small.send(small.agent, Data(1, False, bytes(CHUNK)), Data(1, False, bytes(CHUNK - 10)))
    assert small.agent.send_window(1) == 10
    with pytest.raises(LocalProtocolError):
        small.agent.send(Data(1, False, bytes(11)))
    small.send(small.agent, Data(1, False, bytes(10)))
    assert small.agent.send_window(1) == 0


def test_payload_above_max_data_size_is_refused_even_with_credit(
    open_link: Callable[..., Link],
) -> None:
    link = open_link(server=Settings(max_data_size=CHUNK, initial_window=10 * CHUNK))
    upload(link)
    with pytest.raises(LocalProtocolError):
        link.agent.send(Data(1, False, bytes(CHUNK + 1)))
    link.send(link.agent, Data(1, False, bytes(CHUNK)))
    assert link.agent.send_window(1) == 9 * CHUNK


def test_empty_websocket_fragment_costs_one_byte(small: Link) -> None:
    small.send(small.agent, WebSocketOpen(1, "ws://example.com/"))
    small.to_server()
    small.send(small.server, WebSocketAck(1, 101))
    small.to_agent()
    small.send(small.agent, WebSocketMessage(1, True, False, bytes(CHUNK - 1)))
    small.send(small.agent, WebSocketMessage(1, True, True, b""))
    assert small.agent.send_window(1) == WINDOW - CHUNK
    small.to_server()
    assert small.server.streams[1].recv_window == WINDOW - CHUNK
    for _ in range(WINDOW - CHUNK):
        small.send(small.agent, WebSocketMessage(1, True, True, b""))
    assert small.agent.send_window(1) == 0
    with pytest.raises(LocalProtocolError):
        small.agent.send(WebSocketMessage(1, True, True, b""))
    assert len(small.to_server()) == WINDOW - CHUNK
    assert small.server.streams[1].recv_window == 0
    # One more empty fragment from a peer that ignores its window breaks the link.
    small.inject(small.server, WebSocketMessage(1, True, True, b""))
    with pytest.raises(LinkProtocolError) as info:
        small.server.next_event()
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_peer_sending_beyond_the_window_is_a_link_error(small: Link) -> None:
    upload(small)
    # A peer that ignores its window: the 4 KiB are fine, the next byte is not.
    small.inject(small.server, *[Data(1, False, bytes(CHUNK))] * (WINDOW // CHUNK))
    assert len(list(small.server.events())) == WINDOW // CHUNK
    assert small.server.streams[1].recv_window == 0
    small.inject(small.server, Data(1, False, b"x"))
    with pytest.raises(LinkProtocolError) as info:
        small.server.next_event()
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR
    assert small.server.state is LinkState.CLOSED
    [goaway] = small.pending(small.server)
    assert goaway.code == ErrorCode.FLOW_CONTROL_ERROR
    assert goaway.last_stream_id == 1


def test_server_sending_beyond_the_window_is_a_link_error(small: Link) -> None:
    small.send(small.agent, Connect(1, "example.com", 443))
    small.to_server()
    small.send(small.server, ConnectAck(1, 200))
    small.to_agent()
    small.inject(small.agent, Data(1, False, bytes(CHUNK)))
    small.inject(small.agent, *[Data(1, False, bytes(CHUNK))] * 3, Data(1, False, b"!"))
    with pytest.raises(LinkProtocolError) as info:
        list(small.agent.events())
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_window_updates_are_batched_at_half_the_window(small: Link) -> None:
    upload(small)
    small.send(small.agent, *[Data(1, False, bytes(1000))] * 3)
    small.to_server()
    assert small.agent.send_window(1) == WINDOW - 3000
    assert small.server.streams[1].recv_window == WINDOW - 3000
    small.server.acknowledge_received_data(1, 1000)
    small.server.acknowledge_received_data(1, 1000)
    assert small.server.data_to_send() == []  # 2000 < 2048: nothing yet
    assert small.server.streams[1].unacked == 2000
    small.server.acknowledge_received_data(1, 1000)
    assert small.pending(small.server) == [WindowUpdate(1, 3000)]  # one update for all of it
    assert small.server.streams[1].recv_window == WINDOW
    assert small.server.streams[1].unacked == 0
    assert small.to_agent() == [WindowUpdate(1, 3000)]
    assert small.agent.send_window(1) == WINDOW


def test_server_returns_credit_before_it_replies(small: Link) -> None:
    """A request body larger than one window can arrive before the Response is ready."""
    upload(small)
    assert fill(small, 1) == WINDOW
    small.to_server()
    small.server.acknowledge_received_data(1, WINDOW)
    assert not small.server.streams[1].replied
    assert small.to_agent() == [WindowUpdate(1, WINDOW)]
    assert fill(small, 1) == WINDOW


def test_the_update_goes_out_exactly_at_half(small: Link) -> None:
    upload(small)
    small.send(small.agent, Data(1, False, bytes(CHUNK)), Data(1, False, bytes(CHUNK)))
    small.to_server()
    assert WINDOW // 2 == 2 * CHUNK
    for _ in range(WINDOW // 2 - 1):
        small.server.acknowledge_received_data(1, 1)
    assert small.server.data_to_send() == []
    small.server.acknowledge_received_data(1, 1)
    assert small.pending(small.server) == [WindowUpdate(1, WINDOW // 2)]


def test_acknowledging_nothing_or_a_gone_stream_is_a_no_op(small: Link) -> None:
    upload(small)
    small.send(small.agent, Data(1, True, bytes(CHUNK)))
    small.to_server()
    small.server.acknowledge_received_data(1, 0)
    small.server.acknowledge_received_data(1, -5)
    small.server.acknowledge_received_data(7, WINDOW)
    # The peer has ended its side: it will send nothing more, so no credit is returned.
    small.server.acknowledge_received_data(1, WINDOW)
    assert small.server.data_to_send() == []
    assert small.server.streams[1].unacked == 0


def test_acknowledged_credit_lets_a_long_transfer_through(small: Link) -> None:
    """100 KiB through a 4 KiB window, the receiver handing back what it consumes."""
    upload(small)
    total = 100 * 1024
    sent = received = updates = 0
    while received < total:
        n = min(small.agent.send_window(1), CHUNK, total - sent)
        if n:
            small.send(small.agent, Data(1, False, bytes(n)))
            sent += n
        for event in small.to_server():
            assert isinstance(event, Data)
            received += len(event.data)
            small.server.acknowledge_received_data(1, flow_size(event))
        for event in small.to_agent():
            assert isinstance(event, WindowUpdate)
            assert event.increment >= WINDOW // 2
            updates += 1
    assert sent == received == total
    assert updates >= total // WINDOW  # credit really came back, in batches


def test_an_unread_stream_stalls_alone(small: Link) -> None:
    """Stream 1's reader never acknowledges; stream 3 keeps moving at full speed."""
    upload(small, 1)
    upload(small, 3)
    sent = {1: 0, 3: 0}
    received = {1: 0, 3: 0}
    for _ in range(40):
        for sid in (1, 3):
            sent[sid] += fill(small, sid)
        for event in small.to_server():
            received[event.stream_id] += len(event.data)
            if event.stream_id == 3:
                small.server.acknowledge_received_data(3, len(event.data))
        small.to_agent()
    assert sent[1] == received[1] == WINDOW  # stuck at exactly one window
    assert small.agent.send_window(1) == 0
    assert small.server.streams[1].recv_window == 0
    assert received[3] > 20 * WINDOW  # the other stream was never held back
    # Reading stream 1 again un-stalls it.
    small.server.acknowledge_received_data(1, WINDOW)
    small.to_agent()
    assert small.agent.send_window(1) == WINDOW


def test_window_updates_work_in_the_download_direction(small: Link) -> None:
    small.send(small.agent, Request(1, b"GET", b"http://example.com/big", end_stream=True))
    small.to_server()
    small.send(small.server, Response(1, 200))
    small.to_agent()
    for _ in range(WINDOW // CHUNK):
        small.send(small.server, Data(1, False, bytes(CHUNK)))
    with pytest.raises(LocalProtocolError):
        small.server.send(Data(1, False, b"x"))
    small.to_agent()
    small.agent.acknowledge_received_data(1, WINDOW)
    assert small.to_server() == [WindowUpdate(1, WINDOW)]
    assert small.server.streams[1].send_window == WINDOW


@pytest.mark.parametrize("increment", [0, MAX_WINDOW])
def test_bad_window_increment_resets_the_stream(small: Link, increment: int) -> None:
    upload(small, 1)
    upload(small, 3)
    small.inject(small.agent, WindowUpdate(1, increment))
    with pytest.raises(StreamProtocolError) as info:
        small.agent.next_event()
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR
    assert info.value.stream_id == 1
    assert 1 not in small.agent.streams
    [reset] = small.pending(small.agent)
    assert isinstance(reset, Reset)
    assert (reset.stream_id, reset.code) == (1, ErrorCode.FLOW_CONTROL_ERROR)
    assert small.agent.state is LinkState.OPEN
    assert small.agent.send_window(3) == WINDOW


def test_window_may_grow_up_to_the_maximum(small: Link) -> None:
    upload(small)
    small.inject(small.agent, WindowUpdate(1, MAX_WINDOW - WINDOW))
    assert small.agent.next_event() == WindowUpdate(1, MAX_WINDOW - WINDOW)
    assert small.agent.send_window(1) == MAX_WINDOW


# -- the bound, under any interleaving ----------------------------------------------------------

SEND, TO_SERVER, CONSUME, TO_AGENT = range(4)
steps = st.lists(
    st.tuples(st.sampled_from([SEND, TO_SERVER, CONSUME, TO_AGENT]), st.integers(0, CHUNK)),
    max_size=60,
)


@settings(max_examples=200)
@given(steps)
def test_receiver_never_holds_more_than_one_window(
    open_link: Callable[..., Link], steps: list[tuple[int, int]]
) -> None:
    """Whatever the order of sends, deliveries and reads, the numbers always add up.

    Credit is conserved: the sender's window + bytes on the wire + bytes the receiver holds
    (received, not yet credited back) + credit on the wire back == initial_window. So the
    receiver never holds more than initial_window bytes for the stream, and a reader that
    consumed data always gets its credit out within half a window.
    """
    link = open_link(SMALL, SMALL)
    upload(link)
    agent, server = link.agent, link.server
    in_flight = 0  # Data bytes written by the agent, not yet delivered
    held = 0  # delivered to the server's application, not yet consumed
    for action, n in steps:
        if action == SEND:
            n = min(n, agent.send_window(1))
            if n:
                link.send(agent, Data(1, False, bytes(n)))
                in_flight += n
        elif action == TO_SERVER:
            held += sum(len(e.data) for e in link.to_server())
            in_flight = 0
        elif action == CONSUME:
            n = min(n, held)
            server.acknowledge_received_data(1, n)
            held -= n
        else:
            link.to_agent()
        stream = server.streams[1]
        credit_on_wire = sum(u.increment for u in link.pending(server))
        uncredited = WINDOW - stream.recv_window  # received and not yet credited back
        assert 0 <= uncredited <= WINDOW
        assert uncredited == held + stream.unacked
        assert stream.unacked < WINDOW // 2
        assert agent.send_window(1) + in_flight + uncredited + credit_on_wire == WINDOW
