"""The SOCKS listener's limits over real sockets: the shared connection cap, the negotiation
timeout, a tunnel that never comes up, and the reply codes for the server's answers."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from fluidity.agent.proxy import Proxy, ProxySettings
from fluidity.agent.socks import handle_socks, reply_for
from fluidity.agent.socks5 import Reply
from fluidity.protocol import ConnectAck
from tests.agent.support import offline_proxy
from tests.support.origins import serve_loopback

GREETING = b"\x05\x01\x00"
CONNECT_LOOPBACK = b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", 9)


@asynccontextmanager
async def serve_socks(settings: ProxySettings) -> AsyncIterator[tuple[Proxy, int]]:
    """A SOCKS listener on 127.0.0.1 port 0 whose tunnel never comes up."""
    proxy = offline_proxy(settings)
    async with serve_loopback(partial(handle_socks, proxy)) as port:
        yield proxy, port


async def answer(port: int, data: bytes) -> bytes:
    """Send `data`; everything the listener answers until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while chunk := await stream.receive_some(4096):
            received += chunk
        return received


async def test_over_the_connection_cap_a_request_gets_general_failure() -> None:
    with trio.fail_after(10):
        async with serve_socks(ProxySettings(max_connections=1)) as (proxy, port):
            first = await trio.open_tcp_stream("127.0.0.1", port)
            async with first:
                await first.send_all(GREETING)
                assert await first.receive_some(2) == b"\x05\x00"  # counted, negotiating
                refused = await answer(port, GREETING + CONNECT_LOOPBACK)
            assert proxy.active_requests == 0
    assert refused == b"\x05\x00" + b"\x05\x01\x00\x01" + bytes(6)


async def test_a_client_that_never_finishes_its_request_is_closed() -> None:
    with trio.fail_after(10):
        async with serve_socks(ProxySettings(head_timeout=0.3)) as (proxy, port):
            assert await answer(port, GREETING + b"\x05\x01") == b"\x05\x00"
            assert not proxy.connections


async def test_no_tunnel_in_time_is_a_general_failure() -> None:
    with trio.fail_after(10):
        async with serve_socks(ProxySettings(request_wait_timeout=0.3)) as (_, port):
            reply = await answer(port, GREETING + CONNECT_LOOPBACK)
    assert reply[2:4] == bytes([5, Reply.GENERAL_FAILURE])


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (200, "", Reply.SUCCEEDED),
        (403, "destination 10.0.0.1 is not allowed by the egress policy", Reply.NOT_ALLOWED),
        (502, "connection to origin.test:81 refused", Reply.CONNECTION_REFUSED),
        (502, "could not resolve host refused.test", Reply.HOST_UNREACHABLE),
        (502, "10.0.0.1:80 is unreachable (No route to host)", Reply.HOST_UNREACHABLE),
        (504, "connecting to a.test:80 timed out after 10 s", Reply.TTL_EXPIRED),
        (400, "bad request", Reply.GENERAL_FAILURE),
    ],
)
def test_server_answers_map_to_reply_codes(status: int, error: str, code: Reply) -> None:
    assert reply_for(ConnectAck(1, status, error)) is code
