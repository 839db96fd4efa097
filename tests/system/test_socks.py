"""SOCKS5 through the real agent and server processes, with real clients: curl
(--socks5-hostname) and python-socks; raw bytes where a client cannot say it (BIND)."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
from python_socks import ProxyError
from python_socks.async_.trio import Proxy as SocksProxy

from tests.support.curl import curl
from tests.support.origins import ECHO_TRAILER, http_origin, tcp_echo_origin
from tests.support.pki import Pki
from tests.support.processes import Running, agent_args, run_fluidity, server_args

from .helpers import SERVER_ENV, echo_round_trip, read_to_end

SOCKS_REFUSED = 0x05
SOCKS_HOST_UNREACHABLE = 0x04
SOCKS_NOT_ALLOWED = 0x02
SOCKS_COMMAND_NOT_SUPPORTED = 0x07


@asynccontextmanager
async def socks_agent(pki: Pki, workdir: Path, *extra: str) -> AsyncIterator[Running]:
    """The real server and an agent with a SOCKS listener (port 0) and `extra` flags."""
    async with (
        run_fluidity("fluidity.server", server_args(pki), workdir, env=SERVER_ENV) as server,
        run_fluidity(
            "fluidity.agent", agent_args(pki, server.port, "--socks-port", "0", *extra), workdir
        ) as agent,
    ):
        try:
            yield agent
        finally:
            print(f"--- server log ---\n{server.log()}\n--- agent log ---\n{agent.log()}")


def socks_port(agent: Running) -> int:
    return int(agent.info["socks_port"])


async def socks_connect(
    agent: Running, host: str, port: int, *, rdns: bool = True, auth: str = ""
) -> trio.SocketStream:
    """A SOCKS5 CONNECT by python-socks (a domain goes to the agent as a name when `rdns`)."""
    proxy = SocksProxy.from_url(f"socks5://{auth}127.0.0.1:{socks_port(agent)}", rdns=rdns)
    sock = await proxy.connect(host, port, timeout=20)
    return trio.SocketStream(sock)


@pytest.fixture
async def agent(pki: Pki, tmp_path: Path) -> AsyncIterator[Running]:
    async with socks_agent(pki, tmp_path) as running:
        yield running


async def test_curl_socks5_hostname_resolves_at_the_server(agent: Running) -> None:
    # origin.test exists only in the server's static hosts: only remote resolution finds it.
    with trio.fail_after(30):
        async with http_origin() as origin:
            code, out, err = await curl(
                "--socks5-hostname", f"127.0.0.1:{socks_port(agent)}",
                f"http://origin.test:{origin.port}/echo?via=socks",
            )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo?via=socks"


@pytest.mark.parametrize(
    ("host", "rdns"),
    [("origin.test", True), ("127.0.0.1", False)],
    ids=["domain", "ipv4"],
)
async def test_python_client_relays_bytes_with_half_close(
    agent: Running, host: str, rdns: bool
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    with trio.fail_after(30):
        async with tcp_echo_origin() as origin:
            stream = await socks_connect(agent, host, origin.port, rdns=rdns)
            async with stream:
                received = await echo_round_trip(stream, payload)
    assert received == payload + ECHO_TRAILER
    assert origin.endings == ["eof"]


async def test_ipv6_address_type(agent: Running) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="::1"))
            port = listeners[0].socket.getsockname()[1]
            stream = await socks_connect(agent, "::1", port, rdns=False)
            async with stream:
                assert await echo_round_trip(stream, b"over IPv6") == b"over IPv6"
            nursery.cancel_scope.cancel()


async def test_failures_map_to_socks_reply_codes(agent: Running) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cases = [
        ("origin.test", closed_port, SOCKS_REFUSED),  # server: 502 connection refused
        ("nosuchhost.test", 80, SOCKS_HOST_UNREACHABLE),  # server: 502 could not resolve
        # server: 403 by its egress policy, refused before any connection is tried
        ("10.0.0.1", 80, SOCKS_NOT_ALLOWED),
    ]
    with trio.fail_after(30):
        for host, port, code in cases:
            with pytest.raises(ProxyError) as info:
                await socks_connect(agent, host, port, rdns=True)
            assert info.value.error_code == code, (host, info.value)
    log = agent.log()
    assert "(502, SOCKS reply 5)" in log
    assert "(403, SOCKS reply 2)" in log


async def test_bind_gets_command_not_supported(agent: Running) -> None:
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", socks_port(agent))
        async with stream:
            await stream.send_all(b"\x05\x01\x00")
            await stream.send_all(b"\x05\x02\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", 80))
            answer = b""
            while chunk := await stream.receive_some(64):
                answer += chunk
    assert answer == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)


async def test_username_password_auth(pki: Pki, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            socks_agent(pki, tmp_path, "--proxy-auth", "alice:s3cret") as agent,
            tcp_echo_origin() as echo,
            http_origin() as origin,
        ):
            stream = await socks_connect(agent, "origin.test", echo.port, auth="alice:s3cret@")
            async with stream:
                assert await echo_round_trip(stream, b"hello") == b"hello" + ECHO_TRAILER
            with pytest.raises(ProxyError, match="authentication failure"):
                await socks_connect(agent, "origin.test", echo.port, auth="alice:pw-9f3e@")
            with pytest.raises(ProxyError, match="No acceptable authentication methods"):
                await socks_connect(agent, "origin.test", echo.port)
            assert echo.connections == 1
            url = f"http://origin.test:{origin.port}/echo"
            socks = f"127.0.0.1:{socks_port(agent)}"
            code, _, _ = await curl("--socks5-hostname", socks, url)
            assert code != 0
            code, out, err = await curl(
                "--socks5-hostname", socks, "--proxy-user", "alice:s3cret", url
            )
            assert code == 0, err
            assert json.loads(out)["target"] == "/echo"
            assert origin.connections == 1
        log = agent.log()
    assert "SOCKS authentication failed" in log
    assert "s3cret" not in log
    assert "pw-9f3e" not in log


async def test_a_tunnel_cut_by_the_lost_link_ends_with_a_reset(pki: Pki, tmp_path: Path) -> None:
    async with (
        run_fluidity("fluidity.server", server_args(pki), tmp_path, env=SERVER_ENV) as server,
        run_fluidity(
            "fluidity.agent", agent_args(pki, server.port, "--socks-port", "0"), tmp_path
        ) as agent,
        tcp_echo_origin() as origin,
    ):
        with trio.fail_after(30):
            stream = await socks_connect(agent, "origin.test", origin.port)
            async with stream:
                await stream.send_all(b"ping")
                assert await stream.receive_some(64) == b"ping"
                server.process.kill()
                # Not a clean end of a shorter stream: the client connection is reset.
                with pytest.raises(trio.BrokenResourceError):
                    await read_to_end(stream)
        assert f"tunnel to origin.test:{origin.port} failed" in agent.log()
