"""StreamHandler: dispatch by stream kind, the shared origin pool, activity accounting."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from fluidity.protocol import Request
from fluidity.server.activity import ActivityTracker
from fluidity.server.egress import EgressPolicy
from fluidity.server.handler import StreamHandler, open_stream_handler
from fluidity.tunnel import LinkConfig
from tests.server.harness import exchange, open_connect, open_websocket, serving
from tests.support.origins import HTTPOrigin, TCPOrigin, WebSocketOrigin
from tests.support.scripted import answer_all, scripted_origin


async def test_activity_counts_open_streams_of_every_kind(
    origin: HTTPOrigin, echo_origin: TCPOrigin, ws_origin: WebSocketOrigin
) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            tracker = env.activity
            before = tracker.last_activity_epoch
            tunnel, _ = await open_connect(env.agent, "127.0.0.1", echo_origin.port)
            websocket = await open_websocket(env.agent, ws_origin.url())
            await websocket.wait_reply()
            hanging = await env.agent.open_stream(
                Request(0, b"GET", origin.url("/hang").encode(), end_stream=True)
            )
            await trio.testing.wait_all_tasks_blocked()
            assert tracker.active == 3
            assert tracker.total == 3
            assert tracker.last_activity_epoch >= before

            hanging.reset()
            await tunnel.send_eof()
            while await tunnel.receive_some():
                pass
            await websocket.send_ws_close()
            await websocket.receive_ws()
            await trio.testing.wait_all_tasks_blocked()
            assert tracker.active == 0

            result = await exchange(env.agent, "GET", origin.url("/echo"))
            assert result.status == 200
            await trio.testing.wait_all_tasks_blocked()
            assert tracker.snapshot().active == 0
            assert tracker.snapshot().total == 4


async def test_keepalive_pings_are_not_activity(autojump_clock: trio.testing.MockClock) -> None:
    ticks = itertools.count()
    tracker = ActivityTracker(clock=lambda: float(next(ticks)))  # every touch moves it
    config = LinkConfig(keepalive_interval=1.0, keepalive_timeout=30.0)
    async with serving(config=config, activity=tracker) as env:
        stamp = tracker.last_activity_epoch
        await trio.sleep(20)  # about twenty pings each way
        assert env.agent.rtt is not None
        assert tracker.last_activity_epoch == stamp
        assert tracker.active == 0


async def test_moving_bytes_is_activity(echo_origin: TCPOrigin) -> None:
    ticks = itertools.count()
    tracker = ActivityTracker(clock=lambda: float(next(ticks)))
    with trio.fail_after(10):
        async with serving(activity=tracker) as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", echo_origin.port)
            opened = tracker.last_activity_epoch
            await stream.send_all(b"data")
            assert await stream.receive_some() == b"data"
            assert tracker.last_activity_epoch > opened
            await stream.aclose()


async def test_open_stream_handler_closes_its_pool() -> None:
    with trio.fail_after(10):
        async with scripted_origin(answer_all) as origin:
            async with serving() as env:
                handler = env.handler
                assert (handler.connect_timeout, handler.read_timeout) == (5, 10)
                assert (await exchange(env.agent, "GET", origin.url("/"))).status == 200
                assert handler.pool.statistics().idle == 1
                await trio.testing.wait_all_tasks_blocked()
                assert origin.ended == 0
            await trio.testing.wait_all_tasks_blocked()
            assert (handler.pool.statistics().idle, origin.ended) == (0, 1)


async def test_open_stream_handler_defaults() -> None:
    async with open_stream_handler(connect_timeout=2, read_timeout=3) as handler:
        assert isinstance(handler, StreamHandler)
        assert (handler.connect_timeout, handler.read_timeout) == (2, 3)
        assert handler.policy == EgressPolicy()
