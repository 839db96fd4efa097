"""Receive windows that grow to the path: auto-tuning and the link's receive budget."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fluidity.protocol import (
    Connection,
    Data,
    Request,
    Role,
    Settings,
    WindowPolicy,
    WindowUpdate,
)
from fluidity.protocol.connection import MAX_GROWTH

from .helpers import Link

WINDOW = 4096
CHUNK = 1024
SMALL = Settings(max_data_size=CHUNK, initial_window=WINDOW)
RTT = 0.050


def post(sid: int) -> Request:
    return Request(sid, b"POST", b"http://example.com/upload")


def tuned(max_window: int = 64 * WINDOW, budget: int = 1 << 30, rtt: float | None = RTT) -> Link:
    """A handshaken link whose server grows windows under that policy; streams 1, 3, 5 open."""
    link = Link.open(SMALL, SMALL, WindowPolicy(max_window, budget))
    link.send(link.agent, post(1), post(3), post(5))
    link.to_server()
    if rtt is not None:
        link.server.note_rtt(rtt)
    return link


def move(link: Link, sid: int, n: int) -> None:
    """The agent sends `n` bytes on `sid` (within its window); the server receives them."""
    while n:
        k = min(n, CHUNK)
        link.send(link.agent, Data(sid, False, bytes(k)))
        n -= k
    link.to_server()


def updates(link: Link) -> list[WindowUpdate]:
    out = [m for m in link.pending(link.server) if isinstance(m, WindowUpdate)]
    link.to_agent()
    return out


def test_a_window_limited_stream_quadruples_its_window() -> None:
    link = tuned()
    server = link.server
    move(link, 1, WINDOW)
    server.acknowledge_received_data(1, 1, now=10.0)  # the first read starts the epoch
    assert updates(link) == []
    server.acknowledge_received_data(1, WINDOW // 2 - 1, now=10.0 + 0.9 * RTT)
    # Half the window consumed within 2 RTT: the sender was held back by the window. It
    # grows 4x to 16 KiB; the update carries the consumed credit plus the growth.
    assert server.streams[1].window == 4 * WINDOW
    assert updates(link) == [WindowUpdate(1, WINDOW // 2 + 3 * WINDOW)]
    assert link.agent.send_window(1) == WINDOW // 2 + 3 * WINDOW
    assert server.recv_committed == 6 * WINDOW  # streams 3 and 5 keep the initial one


def test_the_first_half_window_ends_an_epoch_that_began_at_the_first_read() -> None:
    link = tuned()
    move(link, 1, WINDOW)
    link.server.acknowledge_received_data(1, 1, now=5.0)
    link.server.acknowledge_received_data(1, CHUNK - 1, now=5.0 + 0.9 * RTT)
    link.server.acknowledge_received_data(1, CHUNK, now=5.0 + 1.8 * RTT)
    assert link.server.streams[1].window == 4 * WINDOW


def test_a_pause_longer_than_the_rtt_starts_a_new_epoch() -> None:
    # A TLS handshake's few bytes, then the body three RTTs later in a burst: the burst's pace
    # is what counts, not the time since the handshake.
    link = tuned()
    move(link, 1, WINDOW)
    link.server.acknowledge_received_data(1, 100, now=5.0)
    link.server.acknowledge_received_data(1, 100, now=5.0 + 3 * RTT)  # starts the epoch
    link.server.acknowledge_received_data(1, WINDOW // 2 - 200, now=5.0 + 3.2 * RTT)
    assert link.server.streams[1].window > 4 * WINDOW
    # Without the pause rule the epoch would have lasted 3.2 RTT: no growth at all.


def test_an_epoch_much_shorter_than_the_rtt_jumps_toward_the_path() -> None:
    # Half a window in a 20th of an RTT: the window that would take 2 RTT at that pace is 40x.
    link = tuned()
    move(link, 1, WINDOW)
    link.server.acknowledge_received_data(1, 1, now=5.0)
    link.server.acknowledge_received_data(1, WINDOW // 2 - 1, now=5.0 + RTT / 20)
    assert 39 * WINDOW < link.server.streams[1].window <= 40 * WINDOW
    # ... but never more than MAX_GROWTH x in one epoch.
    link = tuned(max_window=1 << 30)
    move(link, 1, WINDOW)
    link.server.acknowledge_received_data(1, 1, now=5.0)
    link.server.acknowledge_received_data(1, WINDOW // 2 - 1, now=5.0 + RTT / 1000)
    assert link.server.streams[1].window == MAX_GROWTH * WINDOW


def test_a_slow_reader_does_not_grow_its_window() -> None:
    link = tuned()
    move(link, 1, WINDOW)
    now = 0.0
    for _ in range(8):  # 256 bytes every 0.9 RTT: half the window takes 7 RTT
        link.server.acknowledge_received_data(1, WINDOW // 16, now=now)
        now += 0.9 * RTT
    assert link.server.streams[1].window == WINDOW
    assert updates(link) == [WindowUpdate(1, WINDOW // 2)]


def test_no_growth_before_the_rtt_is_known_or_without_a_clock() -> None:
    for link, now in ((tuned(rtt=None), 0.0), (tuned(), None)):
        move(link, 1, WINDOW)
        link.server.acknowledge_received_data(1, 1, now=now)
        link.server.acknowledge_received_data(1, WINDOW - 1, now=now)
        assert link.server.streams[1].window == WINDOW
        assert updates(link) == [WindowUpdate(1, WINDOW)]


def test_growth_stops_at_max_window() -> None:
    link = tuned(max_window=3 * WINDOW)
    server = link.server
    now = 0.0
    for _ in range(6):
        window = server.streams[1].window
        move(link, 1, link.agent.send_window(1))
        server.acknowledge_received_data(1, 1, now=now)
        server.acknowledge_received_data(1, window - 1, now=now + 0.001)
        updates(link)
        now += 0.002
    assert server.streams[1].window == 3 * WINDOW


def test_growth_takes_at_most_half_of_the_budget_left() -> None:
    # Three streams at 4 KiB = 12 KiB committed; 8 KiB of budget left.
    link = tuned(budget=5 * WINDOW)
    server = link.server
    move(link, 1, WINDOW)
    server.acknowledge_received_data(1, 1, now=0.0)
    server.acknowledge_received_data(1, WINDOW - 1, now=0.001)
    assert server.streams[1].window == WINDOW + WINDOW  # doubling fits in half of 8 KiB
    move(link, 3, WINDOW)
    server.acknowledge_received_data(3, 1, now=0.0)
    server.acknowledge_received_data(3, WINDOW - 1, now=0.001)
    # 4 KiB left: stream 3 gets half of it, not the doubling it asked for.
    assert server.streams[3].window == WINDOW + WINDOW // 2
    assert server.recv_committed <= 5 * WINDOW


def test_grown_windows_shrink_back_when_new_streams_pass_the_budget() -> None:
    link = tuned(budget=5 * WINDOW)
    server = link.server
    move(link, 1, WINDOW)
    server.acknowledge_received_data(1, 1, now=0.0)
    server.acknowledge_received_data(1, WINDOW - 1, now=0.001)
    assert server.streams[1].window == 2 * WINDOW
    updates(link)
    # Two more streams take the link to 6 x 4 KiB = 24 KiB committed, over the 20 KiB budget.
    link.send(link.agent, post(7), post(9))
    link.to_server()
    assert server.recv_committed == 6 * WINDOW
    move(link, 1, WINDOW)
    server.acknowledge_received_data(1, WINDOW, now=0.002)
    # The 4 KiB consumed are not all returned: the window gives back what is over budget.
    assert server.streams[1].window == WINDOW
    assert updates(link) == []
    assert server.recv_committed == 5 * WINDOW
    # It never goes below the initial window: the next half window is credited in full.
    move(link, 1, WINDOW // 2)
    server.acknowledge_received_data(1, WINDOW // 2, now=0.003)
    assert updates(link) == [WindowUpdate(1, WINDOW // 2)]


def test_an_ended_direction_releases_its_window() -> None:
    link = tuned()
    link.send(link.agent, Data(3, True, b"x"))
    link.to_server()
    assert link.server.recv_committed == 2 * WINDOW


def test_rtt_is_smoothed() -> None:
    conn = Connection(Role.AGENT)
    conn.note_rtt(0.080)
    assert conn.rtt == 0.080
    conn.note_rtt(-1.0)  # not a sample (a clock that went back)
    conn.note_rtt(0.160)
    assert conn.rtt == pytest.approx(0.090)


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="max_window"):
        Connection(Role.SERVER, SMALL, WindowPolicy(max_window=WINDOW - 1))
    with pytest.raises(ValueError, match="receive_budget"):
        WindowPolicy(receive_budget=-1)


# -- the bounds, under any interleaving ---------------------------------------------------------

SEND, TO_SERVER, CONSUME, TO_AGENT, TICK, OPEN = range(6)
SIDS = (1, 3, 5)
steps = st.lists(
    st.tuples(
        st.sampled_from([SEND, TO_SERVER, CONSUME, TO_AGENT, TICK, OPEN]),
        st.sampled_from((1, 1, 1, 3, 5)),  # mostly one stream, so it grows
        st.integers(0, 4 * CHUNK),
    ),
    min_size=30,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from([8 * WINDOW, 16 * WINDOW]), st.integers(2 * WINDOW, 16 * WINDOW))
def test_credit_is_conserved_and_no_stream_exceeds_its_window(
    steps: list[tuple[int, int, int]], max_window: int, budget: int
) -> None:
    """Whatever the order of sends, deliveries, reads, clock ticks and new streams:

    * credit is conserved per stream: the sender's window + bytes on the wire + bytes the
      receiver holds + consumed bytes not yet credited + credit on the wire back == the
      receiver's window for that stream;
    * the receiver never holds more than the window it advertised;
    * initial_window <= window <= max_window; the committed total is the sum of the windows;
    * a window grows only while the total stays within the budget.
    """
    link = tuned(max_window=max_window, budget=budget)
    agent, server = link.agent, link.server
    in_flight = dict.fromkeys(SIDS, 0)
    held = dict.fromkeys(SIDS, 0)
    now = 0.0
    next_sid = 7
    for action, sid, n in steps:
        before = {s: st_.window for s, st_ in server.streams.items()}
        if action == SEND:
            n = min(n, agent.send_window(sid))
            in_flight[sid] += n
            while n:
                k = min(n, CHUNK)
                link.send(agent, Data(sid, False, bytes(k)))
                n -= k
        elif action == TO_SERVER or (action == OPEN and next_sid < 21):
            if action == OPEN:  # a new stream nobody sends on (it keeps its window)
                link.send(agent, post(next_sid))
                next_sid += 2
            for message in link.to_server():
                if isinstance(message, Data):
                    held[message.stream_id] += len(message.data)
            in_flight = dict.fromkeys(SIDS, 0)
        elif action == CONSUME:
            n = min(n, held[sid])
            server.acknowledge_received_data(sid, n, now=now)
            held[sid] -= n
        elif action == TO_AGENT:
            link.to_agent()
        elif action == TICK:
            now += n / 10_000  # 0 to 0.3 s: from far below to far above 2 RTT
        pending = link.pending(server)
        total = 0
        for s, stream in server.streams.items():
            total += stream.window
            assert WINDOW <= stream.window <= max_window
            if s not in SIDS:
                continue
            back = sum(u.increment for u in pending if isinstance(u, WindowUpdate) and
                       u.stream_id == s)  # fmt: skip
            assert held[s] <= stream.window
            assert stream.recv_window + held[s] + stream.unacked == stream.window
            assert agent.send_window(s) + in_flight[s] + held[s] + stream.unacked + back == (
                stream.window
            )
        assert server.recv_committed == total
        if any(server.streams[s].window > w for s, w in before.items() if s in server.streams):
            event("a window grew")
            assert server.recv_committed <= budget
        if any(server.streams[s].window < w for s, w in before.items() if s in server.streams):
            event("a window shrank")
