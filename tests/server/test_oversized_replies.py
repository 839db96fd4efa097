"""Replies too large for one tunnel frame cost their own stream a 502, never the link.

The agent's link here accepts frames of at most 1 KiB of payload (its `max_data_size`), so a
real origin's ordinary-looking answer (a 4 KB header) does not fit in the server's reply frame;
the pool's own limit is tried with 70 KB and 1 MB heads at the default frame size.
"""

from __future__ import annotations

import hashlib

import trio

from fluidity.protocol import Connect, ConnectAck, Settings, WebSocketAck
from fluidity.server.origin_pool import MAX_HEAD
from fluidity.tunnel import Link, LinkConfig
from tests.server.harness import exchange, open_websocket, serving
from tests.support.origins import HTTPOrigin, WebSocketOrigin, pattern_sha256

#: The agent accepts frames of 1 KiB of payload (the smallest setting).
SMALL_FRAMES = LinkConfig(settings=Settings(peer_name="agent", max_data_size=1024))
TRANSFER = 8 * 1024 * 1024


async def download(agent: Link, url: str, into: list[str]) -> None:
    result = await exchange(agent, "GET", url)
    assert result.status == 200
    into.append(hashlib.sha256(result.body).hexdigest())


async def test_a_response_head_too_large_for_a_frame_is_a_502_and_the_link_goes_on(
    origin: HTTPOrigin,
) -> None:
    done: list[str] = []
    with trio.fail_after(20):
        async with serving(agent_config=SMALL_FRAMES) as env, trio.open_nursery() as nursery:
            nursery.start_soon(download, env.agent, origin.url(f"/stream?n={TRANSFER}"), done)
            big = await exchange(env.agent, "GET", origin.url("/headers?size=4096"))
            after = await exchange(env.agent, "GET", origin.url("/echo"))
            assert env.agent.is_open
            assert env.server.is_open
    assert big.status == 502
    reason = big.header("x-fluidity-error") or ""
    assert "response head is too large for the tunnel" in reason
    assert "at most 1088" in reason  # 1 KiB + the frame envelope
    assert b"bbbb" not in big.body  # nothing of the origin's head was passed on
    assert after.status == 200
    assert done == [pattern_sha256(TRANSFER)]  # the concurrent transfer is intact


async def test_the_pool_refuses_a_head_above_one_frame_while_reading(origin: HTTPOrigin) -> None:
    with trio.fail_after(20):
        async with serving() as env:
            at_limit = await exchange(env.agent, "GET", origin.url("/headers?size=60000"))
            over = await exchange(env.agent, "GET", origin.url("/headers?size=70000"))
            absurd = await exchange(env.agent, "GET", origin.url("/headers?size=1000000"))
            after = await exchange(env.agent, "GET", origin.url("/echo"))
    assert at_limit.status == 200
    assert at_limit.header("x-big") == "b" * 60000
    for answer in (over, absurd):
        assert answer.status == 502
        assert answer.header("x-fluidity-error") == (
            f"the origin's response head is larger than the tunnel carries ({MAX_HEAD} bytes)"
        )
    assert after.status == 200


async def test_a_connect_ack_too_large_for_a_frame_is_sent_short() -> None:
    host = "h" * 1100 + ".test"  # "could not resolve host hhh…" exceeds 1 KiB
    with trio.fail_after(10):
        async with serving(agent_config=SMALL_FRAMES) as env:
            stream = await env.agent.open_stream(Connect(0, host, 443))
            ack = await stream.wait_reply()
            assert isinstance(ack, ConnectAck)
            after = await exchange(env.agent, "GET", "http://no-such-host.test/")
            assert env.agent.is_open
    assert ack.status == 502
    assert ack.error == "the upstream connection failed (the reason is too large for the tunnel)"
    assert after.status == 502  # answered: the link is fine


async def test_a_websocket_ack_too_large_for_a_frame_is_a_failed_ack(
    ws_origin: WebSocketOrigin,
) -> None:
    with trio.fail_after(10):
        async with serving(agent_config=SMALL_FRAMES) as env:
            stream = await open_websocket(env.agent, ws_origin.url("/big-head"))
            ack = await stream.wait_reply()
            assert isinstance(ack, WebSocketAck)
            closes = await ws_origin.wait_closes(1)  # the origin's socket was closed
            fine = await open_websocket(env.agent, ws_origin.url("/"))
            fine_ack = await fine.wait_reply()
    assert ack.status == 502
    assert "handshake answer is too large for the tunnel" in ack.error
    assert closes[0][0] == 1001
    assert isinstance(fine_ack, WebSocketAck)
    assert fine_ack.status == 101
