"""Heads too large for one frame cost their own request, never the link."""

from __future__ import annotations

import pytest
import trio

from fluidity.protocol import FRAME_ENVELOPE, Request, Response
from fluidity.tunnel import FrameTooLarge, TunnelStream

from .helpers import linked_pair, receive_all

LIMIT = 64 * 1024 + FRAME_ENVELOPE  # the default max_data_size + envelope


def big_headers(size: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-big", b"a" * size)]


async def test_an_oversized_request_head_raises_and_the_link_goes_on() -> None:
    async def handler(stream: TunnelStream) -> None:
        assert isinstance(stream.head, Request)
        await stream.send_reply(Response(stream.stream_id, 200, b"OK", [], False))
        await stream.send_all(stream.head.url)
        await stream.send_eof()

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            head = Request(0, b"GET", b"http://o/" + b"a" * 70_000, [], True)
            with pytest.raises(FrameTooLarge) as info:
                await agent.open_stream(head)
            assert info.value.limit == LIMIT
            assert info.value.size > LIMIT
            assert not agent.streams  # nothing was opened
            # The next request takes the next id and is answered: the link is intact.
            stream = await agent.open_stream(Request(0, b"GET", b"http://o/ok", [], True))
            assert stream.stream_id == 1
            await stream.wait_reply()
            assert (await receive_all(stream))[0] == len(b"http://o/ok")


async def test_an_oversized_reply_raises_and_a_smaller_one_can_follow() -> None:
    raised: list[FrameTooLarge] = []

    async def handler(stream: TunnelStream) -> None:
        try:
            await stream.send_reply(
                Response(stream.stream_id, 200, b"OK", big_headers(70_000), True)
            )
        except FrameTooLarge as exc:
            raised.append(exc)
            await stream.send_reply(Response(stream.stream_id, 502, b"Bad Gateway", [], True))

    with trio.fail_after(10):
        async with linked_pair(handler) as (agent, _server):
            stream = await agent.open_stream(Request(0, b"GET", b"http://o/", [], True))
            reply = await stream.wait_reply()
            assert isinstance(reply, Response)
            assert reply.status == 502
            assert len(raised) == 1
            assert raised[0].size > LIMIT
