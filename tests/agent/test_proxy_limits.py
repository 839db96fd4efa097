"""The proxy's limits with real sockets and clients: /healthz against DNS rebinding, proxy
authentication that gives up, the cap on client connections, and what error answers say."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import httpx2
import pytest
import trio
import trio.testing

from fluidity.agent.proxy import Proxy, ProxySettings, _too_large, describe_h11_error
from fluidity.protocol import Connect, FrameTooLarge, Request
from tests.agent.support import offline_proxy
from tests.support.origins import serve_loopback

SECRET = "hunter2-9d1c"


@asynccontextmanager
async def serve_proxy(settings: ProxySettings) -> AsyncIterator[tuple[Proxy, int]]:
    """A Proxy on 127.0.0.1 port 0 whose tunnel never comes up (requests that need it wait)."""
    proxy = offline_proxy(settings, {"status": "ok"})
    async with serve_loopback(proxy.handle) as port:
        yield proxy, port


async def read_response(
    stream: trio.SocketStream, method: bytes = b"GET"
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response from `stream`: status, headers (last value wins), body."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, dict(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes; everything the proxy answers until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        return received


# -- /healthz and DNS rebinding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("127.0.0.1:8080", 200),
        ("[::1]:8080", 200),
        ("[::1]", 200),
        ("localhost", 200),
        ("LocalHost.:8080", 200),
        ("proxy.lan:8080", 200),  # listed in healthz_hosts
        ("evil.example", 421),
        ("evil.example:8080", 421),
        ("localhost.evil.example", 421),
        ("127.0.0.1.evil.example", 421),
        ("[::1]x", 421),
    ],
)
async def test_healthz_answers_only_to_loopback_or_listed_hosts(host: str, status: int) -> None:
    settings = ProxySettings(healthz_hosts=frozenset({"proxy.lan"}))
    with trio.fail_after(10):
        async with serve_proxy(settings) as (_, port), httpx2.AsyncClient(trust_env=False) as http:
            response = await http.get(f"http://127.0.0.1:{port}/healthz", headers={"Host": host})
    assert response.status_code == status
    if status == 421:
        assert "DNS rebinding" in response.text
        assert host not in response.text
    else:
        assert response.json() == {"status": "ok"}


async def test_healthz_without_host_or_with_two_is_refused() -> None:
    with trio.fail_after(10):
        async with serve_proxy(ProxySettings()) as (_, port):
            no_host = await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
            two_hosts = await exchange(
                port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n"
                b"Connection: close\r\n\r\n"
            )  # fmt: skip
    assert no_host.startswith(b"HTTP/1.1 421 ")
    assert two_hosts.startswith(b"HTTP/1.1 400 ")  # h11 refuses two Host headers itself


async def test_head_healthz_has_no_body() -> None:
    with trio.fail_after(10):
        async with (
            serve_proxy(ProxySettings()) as (_, port),
            httpx2.AsyncClient(trust_env=False) as http,
        ):
            response = await http.head(f"http://127.0.0.1:{port}/healthz")
    assert response.status_code == 200
    assert response.content == b""


# -- proxy authentication --------------------------------------------------------------------------


async def test_three_failed_logins_close_the_connection_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = b"Proxy-Authorization: Basic " + SECRET.encode() + b"\r\n"
    request = b"GET / HTTP/1.1\r\nHost: x\r\n" + wrong + b"\r\n"
    with trio.fail_after(10):
        async with serve_proxy(ProxySettings(proxy_auth="alice:" + SECRET)) as (_, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                statuses = []
                for _ in range(3):
                    await stream.send_all(request)
                    status, headers, _ = await read_response(stream)
                    statuses.append((status, headers.get(b"connection")))
                assert await stream.receive_some(100) == b"", "closed after the third"
            # A new connection may try again, and the right credentials work.
            good = await exchange(
                port,
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Proxy-Authorization: Basic YWxpY2U6aHVudGVyMi05ZDFj\r\n\r\n",
            )
    assert statuses == [(407, None), (407, None), (407, b"close")]
    assert b"not a web server" in good  # authenticated: the agent's own page answered
    failures = [r for r in caplog.records if "proxy authentication failed" in r.getMessage()]
    assert len(failures) == 1, "rate-limited: one line for the burst"
    assert "wrong user or password" in failures[0].getMessage()
    assert SECRET not in caplog.text
    assert "YWxpY2U6aHVudGVyMi05ZDFj" not in caplog.text


# -- the cap on client connections -----------------------------------------------------------------


async def test_at_the_cap_the_oldest_idle_connection_makes_room() -> None:
    settings = ProxySettings(max_connections=3)
    with trio.fail_after(10):
        async with serve_proxy(settings) as (proxy, port):
            idle = []
            for _ in range(3):
                idle.append(await trio.open_tcp_stream("127.0.0.1", port))
                await trio.testing.wait_all_tasks_blocked(0.01)  # accepted and waiting
            assert len(proxy.idle_connections) == 3
            answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")  # served: the agent's own page
            assert await idle[0].receive_some(100) == b"", "the oldest idle one was closed"
            for stream in idle[1:]:
                with trio.move_on_after(0.2):
                    await stream.receive_some(100)
                    pytest.fail("a younger idle connection was closed")
            for stream in idle:
                await stream.aclose()


async def test_at_the_cap_with_nothing_idle_a_newcomer_gets_503() -> None:
    """Busy connections (here: requests waiting for a tunnel that never comes) are never
    closed to make room; a newcomer is told why."""
    settings = ProxySettings(max_connections=2, request_wait_timeout=60)
    request = b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    with trio.fail_after(10):
        async with serve_proxy(settings) as (proxy, port):
            busy = []
            for _ in range(2):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(request)
                busy.append(stream)
            await trio.testing.wait_all_tasks_blocked(0.01)  # both wait for the tunnel
            assert proxy.active_requests == 2
            answer = await exchange(port, request)
            for stream in busy:
                await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close" in answer
    assert b"retry-after: 1" in answer
    assert b"max_client_connections" in answer


# -- what error answers say ----------------------------------------------------------------------


def test_an_oversized_connect_is_431_and_targets_decide_414() -> None:
    too_large = FrameTooLarge(70_100, 65_600)
    assert _too_large(Connect(0, "h" * 70_000, 443), too_large).status == 431
    long_url = Request(0, b"GET", b"http://x/?" + b"a" * 70_000, ((b"host", b"x"),))
    assert _too_large(long_url, too_large).status == 414
    big_headers = Request(0, b"GET", b"http://x/", ((b"x-big", b"b" * 70_000),))
    refused = _too_large(big_headers, too_large)
    assert refused.status == 431
    assert "b" * 100 not in refused.reason


@pytest.mark.parametrize(
    "data",
    [
        b"GET http://x/?" + SECRET.encode() + b" HTTP/1.1 extra\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nHost: x\r\n" + SECRET.encode() + b"\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nHost: x\r\nX: " + SECRET.encode() + b"\x00\r\n\r\n",
        b"POST http://x/ HTTP/1.1\r\nHost: x\r\nContent-Length: " + SECRET.encode() + b"\r\n\r\n",
        b"POST http://x/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
        + SECRET.encode()
        + b"\r\n\r\n",
        b"\x16\x03\x01" + SECRET.encode(),  # TLS sent to the plain-HTTP port
    ],
)
def test_h11_errors_are_described_without_the_bytes(data: bytes) -> None:
    error = h11_error(data)
    assert SECRET not in describe_h11_error(error)
    assert describe_h11_error(error) != "malformed request", str(error)


def h11_error(data: bytes) -> h11.RemoteProtocolError:
    """The error h11 raises for `data` as the start of a request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        while conn.next_event() is not h11.NEED_DATA:
            pass
    except h11.RemoteProtocolError as exc:
        return exc
    raise AssertionError(f"h11 accepted {data!r}")
