"""Routing rules in the real agent process, with no server at all: direct traffic works with the
link down (HTTP, CONNECT, WebSocket, SOCKS), blocked traffic is refused at once naming the
rule, tunnelled traffic waits for the link, and /proxy.pac says the same to a PAC evaluator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
import trio
from pypac.parser import PACFile
from python_socks import ProxyError
from python_socks.async_.trio import Proxy as SocksProxy

from tests.support.curl import curl
from tests.support.origins import ECHO_TRAILER, http_origin, tcp_echo_origin, websocket_origin
from tests.support.pki import Pki
from tests.support.processes import Running, agent_args, run_fluidity
from tests.support.wsclient import proxied_websocket

from .helpers import echo_round_trip

#: Direct: loopback only (the tests' destinations). Blocked: names and a private block that no
#: connection is ever tried to. Everything else: the tunnel, which is down.
ROUTES = ("direct 127.0.0.0/8 localhost", "block .ads.test 10.0.0.0/8")


@pytest.fixture
async def agent(pki: Pki, tmp_path: Path) -> AsyncIterator[Running]:
    """The agent with ROUTES and a SOCKS listener, its server port closed (port 1 on
    loopback): the tunnel never comes up, and tunnelled requests give up after 1 s."""
    args = agent_args(
        pki, 1, "--socks-port", "0", "--request-wait-timeout", "1",
        *(a for rule in ROUTES for a in ("--routes", rule)),
    )  # fmt: skip
    async with run_fluidity("fluidity.agent", args, tmp_path) as running:
        try:
            yield running
        finally:
            print(f"--- agent log ---\n{running.log()}")


def proxy_of(agent: Running) -> str:
    return f"http://127.0.0.1:{agent.port}"


async def test_direct_http_works_with_the_link_down(agent: Running) -> None:
    with trio.fail_after(30):
        async with (
            http_origin() as origin,
            httpx2.AsyncClient(proxy=proxy_of(agent), trust_env=False, timeout=20) as http,
        ):
            response = await http.post(
                f"http://127.0.0.1:{origin.port}/upload", content=b"x" * 5000
            )
            health = (await http.get(f"{proxy_of(agent)}/healthz")).json()
    assert response.status_code == 200
    assert response.json()["received"] == 5000
    assert response.headers["via"] == "1.1 fluidity"
    assert health["tunnel"] in {"connecting", "down"}
    assert health["connects"] == 0  # nothing ever went through a tunnel


async def test_direct_connect_websocket_and_socks_with_the_link_down(agent: Running) -> None:
    with trio.fail_after(30):
        async with tcp_echo_origin() as echo, websocket_origin() as ws_origin:
            stream, head = await open_connect_agent(agent, f"127.0.0.1:{echo.port}")
            async with stream:
                assert head.startswith(b"HTTP/1.1 200 ")
                assert await echo_round_trip(stream, b"connect") == b"connect" + ECHO_TRAILER
            url = f"ws://localhost:{ws_origin.port}/"
            async with proxied_websocket(agent.port, url) as ws:
                await ws.send("direct")
                assert await ws.receive() == "direct"
            socks = SocksProxy.from_url(f"socks5://127.0.0.1:{agent.info['socks_port']}")
            sock = await socks.connect("127.0.0.1", echo.port, timeout=20)
            async with trio.SocketStream(sock) as stream:
                assert await echo_round_trip(stream, b"socks") == b"socks" + ECHO_TRAILER


async def open_connect_agent(agent: Running, authority: str) -> tuple[trio.SocketStream, bytes]:
    """A raw CONNECT to the agent; the stream and the response head."""
    stream = await trio.open_tcp_stream("127.0.0.1", agent.port)
    await stream.send_all(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        assert chunk, f"the agent closed during the CONNECT answer: {head!r}"
        head += chunk
    return stream, head


async def test_blocked_destinations_are_refused_at_once_naming_the_rule(agent: Running) -> None:
    with trio.fail_after(30):
        code, out, err = await curl("-i", "-x", proxy_of(agent), "http://pixel.ads.test/x.gif")
        assert code == 0, err
        assert out.startswith("HTTP/1.1 403 ")
        assert "pixel.ads.test is blocked by the agent's rule 2 (block .ads.test 10.0.0.0/8)" in out
        stream, head = await open_connect_agent(agent, "10.1.2.3:443")
        async with stream:
            assert head.startswith(b"HTTP/1.1 403 ")
        with pytest.raises(ConnectionRefusedError, match="403"):
            async with proxied_websocket(agent.port, "ws://ads.test/feed"):
                pass
        socks = SocksProxy.from_url(f"socks5://127.0.0.1:{agent.info['socks_port']}", rdns=True)
        with pytest.raises(ProxyError) as info:
            await socks.connect("tracker.ads.test", 443, timeout=20)
        assert info.value.error_code == 0x02  # connection not allowed by ruleset


async def test_tunnelled_traffic_waits_for_the_link_and_fails(agent: Running) -> None:
    with trio.fail_after(30):
        code, out, err = await curl("-i", "-x", proxy_of(agent), "http://origin.test/")
    assert code == 0, err
    assert out.startswith("HTTP/1.1 502 ")
    assert "tunnel to the server is unavailable after 1 s" in out


async def test_proxy_pac_from_the_agent_matches_its_routes(agent: Running) -> None:
    with trio.fail_after(30):
        async with httpx2.AsyncClient(trust_env=False, timeout=20) as http:
            response = await http.get(f"{proxy_of(agent)}/proxy.pac")
            rebound = await http.get(
                f"{proxy_of(agent)}/proxy.pac", headers={"Host": "evil.example"}
            )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ns-proxy-autoconfig"
    assert rebound.status_code == 421
    pac = PACFile(response.text)
    proxy = f"PROXY 127.0.0.1:{agent.port}"
    for host, expected in [
        ("127.0.0.1", "DIRECT"),
        ("localhost", "DIRECT"),
        ("ads.test", proxy),  # blocked: sent to the agent, which answers 403
        ("10.9.8.7", proxy),
        ("example.com", proxy),
    ]:
        assert pac.find_proxy_for_url(f"http://{host}/", host) == expected, host


async def test_proxy_pac_needs_no_proxy_credentials(pki: Pki, tmp_path: Path) -> None:
    args = agent_args(pki, 1, "--proxy-auth", "alice:s3cret", "--routes", "direct localhost")
    with trio.fail_after(30):
        async with run_fluidity("fluidity.agent", args, tmp_path) as agent:
            code, out, err = await curl(f"http://localhost:{agent.port}/proxy.pac")
            _, health, _ = await curl("-i", f"http://localhost:{agent.port}/healthz")
    assert code == 0, err
    assert f'var DEFAULT_ROUTE = "PROXY localhost:{agent.port}";' in out
    assert health.startswith("HTTP/1.1 407 ")  # the rest of the agent still asks for them
