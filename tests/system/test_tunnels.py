"""CONNECT and WebSocket through the real agent and server processes."""

from __future__ import annotations

import json

import pytest
import trio

from tests.support.curl import curl
from tests.support.origins import (
    ECHO_TRAILER,
    http_origin,
    tcp_echo_origin,
    websocket_origin,
)
from tests.support.pki import make_tls
from tests.support.wsclient import proxied_websocket

from .helpers import Tunnel, echo_round_trip, open_connect


async def test_connect_to_an_https_origin_with_curl(tunnel: Tunnel) -> None:
    tls = make_tls("origin.test")
    ca = tunnel.workdir / "origin-ca.pem"
    tls.ca.cert_pem.write_to_path(str(ca))
    async with http_origin(tls=tls.server) as origin:
        code, out, err = await curl(
            "-x", tunnel.proxy, "--cacert", str(ca), f"https://origin.test:{origin.port}/echo"
        )
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo"


async def test_connect_relays_bytes_with_half_close(tunnel: Tunnel) -> None:
    async with tcp_echo_origin() as origin:
        stream, head = await open_connect(tunnel, f"origin.test:{origin.port}")
        async with stream:
            assert head.startswith(b"HTTP/1.1 200 ")
            payload = bytes(range(256)) * 4096  # 1 MiB
            received = await echo_round_trip(stream, payload)
    # Everything came back, then the origin's answer to our EOF, then its EOF.
    assert received == payload + ECHO_TRAILER
    assert origin.endings == ["eof"]


async def test_connect_failures_are_502_with_a_reason(tunnel: Tunnel) -> None:
    # A port nobody listens on: bind one, note it, close it.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    stream, head = await open_connect(tunnel, f"origin.test:{closed_port}")
    async with stream:
        assert head.startswith(b"HTTP/1.1 502 ")
    stream, head = await open_connect(tunnel, "nosuchhost.test:443")
    async with stream:
        assert head.startswith(b"HTTP/1.1 502 ")
        # A 5xx closes the connection: read the rest of the answer up to that.
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                head += chunk
    body = head.split(b"\r\n\r\n", 1)[1]
    assert b"could not resolve host nosuchhost.test" in body


async def test_websocket_echo_through_the_tunnel(tunnel: Tunnel) -> None:
    async with websocket_origin() as origin:
        url = f"ws://origin.test:{origin.port}/chat"
        async with proxied_websocket(tunnel.agent.port, url, subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            await ws.send("hello")
            assert await ws.receive() == "hello"
            await ws.send("héllo wörld ✓")
            assert await ws.receive() == "héllo wörld ✓"
            await ws.send(b"\x00\x01\x02")
            assert await ws.receive() == b"\x00\x01\x02"
            big = bytes(range(256)) * 4096  # 1 MiB in one message
            await ws.send(big)
            assert await ws.receive() == big
            await ws.send_fragments([b"frag-", b"ment-", b"ed"])
            assert await ws.receive() == b"frag-ment-ed"
            assert await ws.ping(b"are you there") == b"are you there"
            await ws.send("close 4001 bye now")
            code, reason = await ws.wait_closed()
        assert (code, reason) == (4001, "bye now")
        assert (await origin.wait_closes(1))[0][0] == 4001


async def test_websocket_client_close_code_reaches_the_origin(tunnel: Tunnel) -> None:
    async with websocket_origin() as origin:
        url = f"ws://origin.test:{origin.port}/"
        async with proxied_websocket(tunnel.agent.port, url) as ws:
            await ws.send("ping")
            assert await ws.receive() == "ping"
            code, _ = await ws.close(4321, "client leaving")
        assert code == 4321
        closes = await origin.wait_closes(1)
    assert closes[0] == (4321, "client leaving")


async def test_websocket_refused_by_the_origin(tunnel: Tunnel) -> None:
    async with websocket_origin() as origin:
        url = f"ws://origin.test:{origin.port}/reject"
        with pytest.raises(ConnectionRefusedError, match="403"):
            async with proxied_websocket(tunnel.agent.port, url):
                pass


async def test_wss_through_connect(tunnel: Tunnel) -> None:
    """Browsers send wss:// as CONNECT plus TLS: the tunnel carries the TLS bytes."""
    tls = make_tls("origin.test")
    async with websocket_origin(tls=tls.server) as origin:
        stream, head = await open_connect(tunnel, f"origin.test:{origin.port}")
        assert head.startswith(b"HTTP/1.1 200 ")
        tls_stream = trio.SSLStream(stream, tls.client, server_hostname="origin.test")
        await tls_stream.do_handshake()
        assert tls_stream.version() in {"TLSv1.2", "TLSv1.3"}
        await tls_stream.aclose()
