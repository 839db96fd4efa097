"""Windows that grow to the path, across a delay line on the virtual clock."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from fluidity.protocol import DEFAULT_INITIAL_WINDOW, Request, Response, WindowPolicy
from fluidity.tunnel import LinkConfig, TunnelStream

from .helpers import delay_line, linked_pair

MIB = 1024 * 1024
SIZE = 32 * MIB
ONE_WAY = 0.050  # 100 ms round trip


async def download(stream: TunnelStream) -> None:
    """Handler: answer with SIZE bytes."""
    assert isinstance(stream.head, Request)
    size = int(stream.head.url.rsplit(b"/", 1)[1])
    await stream.send_reply(Response(stream.stream_id, 200, b"OK", (), False))
    chunk = bytes(256 * 1024)
    for _ in range(size // len(chunk)):
        await stream.send_all(chunk)
    await stream.send_eof()


async def timed_download(agent_config: LinkConfig, size: int = SIZE) -> tuple[float, int]:
    """Virtual seconds for one download across the delay line, and the widest window seen."""
    async with (
        delay_line(ONE_WAY) as transports,
        linked_pair(download, agent_config, None, transports) as (agent, _server),
    ):
        stream = await agent.open_stream(Request(0, b"GET", f"http://o/{size}".encode(), (), True))
        start = trio.current_time()
        await stream.wait_reply()
        received = widest = 0
        while data := await stream.receive_some():
            received += len(data)
            state = agent.conn.streams.get(stream.stream_id)
            if state is not None:
                widest = max(widest, state.window)
        assert received == size
        return trio.current_time() - start, widest


async def test_a_download_across_a_long_path_is_not_held_to_one_window(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(600):
        fixed, fixed_widest = await timed_download(
            LinkConfig(policy=WindowPolicy(max_window=DEFAULT_INITIAL_WINDOW))
        )
        tuned, tuned_widest = await timed_download(LinkConfig())
    # A fixed 256 KiB window moves 256 KiB per round trip: 32 MiB take 128 RTT (12.8 s).
    assert fixed_widest == DEFAULT_INITIAL_WINDOW
    assert fixed > 100 * 2 * ONE_WAY
    # Grown windows fill the (unlimited) path after a few doublings: ~7 RTT to reach 16 MiB.
    assert tuned_widest == 16 * MIB
    assert tuned < fixed / 5


async def test_growth_stays_within_the_receive_budget(autojump_clock: MockClock) -> None:
    budget = 4 * MIB
    with trio.fail_after(600):
        _, widest = await timed_download(LinkConfig(policy=WindowPolicy(receive_budget=budget)))
    # One stream of 256 KiB committed, then growth takes at most half of what is left each
    # time: the window never passes the budget.
    assert DEFAULT_INITIAL_WINDOW < widest <= budget


async def test_stalled_readers_hold_no_more_than_the_budget_and_others_go_on(
    autojump_clock: MockClock,
) -> None:
    budget = 8 * MIB
    config = LinkConfig(policy=WindowPolicy(receive_budget=budget))
    with trio.fail_after(600):
        async with (
            delay_line(ONE_WAY) as transports,
            linked_pair(download, config, None, transports) as (agent, _server),
        ):
            stalled = []
            for _ in range(8):
                stream = await agent.open_stream(
                    Request(0, b"GET", f"http://o/{SIZE}".encode(), (), True)
                )
                await stream.wait_reply()
                for _ in range(16):  # read 4 MiB fast, so the window grows, then stall
                    await stream.receive_some(256 * 1024)
                stalled.append(stream)
            await trio.sleep(20 * 2 * ONE_WAY)  # the servers fill every window there is
            # Growth stays within the budget; only the initial windows of streams opened after
            # it was reached (they have that credit from the start) can add to it.
            held = sum(s.buffered for s in stalled)
            assert held > budget // 2  # the stalled readers did grow, and hold what they got
            assert held <= agent.conn.recv_committed <= budget + 8 * DEFAULT_INITIAL_WINDOW
            # A ninth stream still gets its whole 4 MiB.
            stream = await agent.open_stream(
                Request(0, b"GET", f"http://o/{4 * MIB}".encode(), (), True)
            )
            await stream.wait_reply()
            received = 0
            while data := await stream.receive_some():
                received += len(data)
            assert received == 4 * MIB
            for s in stalled:
                s.reset()
