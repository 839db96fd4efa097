"""Failure paths with the real processes: bad peers, bad requests, dying servers, signals."""

from __future__ import annotations

import signal
import ssl
from pathlib import Path

import httpx2
import pytest
import trio

from fluidity.certs import create_ca, issue_client_cert
from tests.support.curl import curl
from tests.support.origins import http_origin
from tests.support.pki import Pki, make_pki
from tests.support.processes import (
    agent_args,
    run_fluidity,
    server_args,
)

from .helpers import SERVER_ENV, Tunnel, client, url


async def raw_request(port: int, data: bytes) -> bytes:
    """Send raw bytes to the agent and read until it closes (or 5 s pass)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


async def test_unknown_host_closed_port_and_hanging_origin(tunnel: Tunnel) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with http_origin() as origin, client(tunnel) as http:
        unknown = await http.get("http://nosuchhost.test/")
        refused = await http.get(f"http://origin.test:{closed_port}/")
        hanging = await http.get(url(origin, "/hang"))
        fine = await http.get(url(origin, "/echo"))
    assert unknown.status_code == 502
    assert "nosuchhost.test" in unknown.text
    assert refused.status_code == 502
    assert hanging.status_code == 504
    assert fine.status_code == 200, "the agent keeps serving after failures"


async def test_malformed_requests_get_400_and_the_agent_keeps_serving(tunnel: Tunnel) -> None:
    garbage = await raw_request(tunnel.agent.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    smuggle = await raw_request(
        tunnel.agent.port,
        b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert smuggle.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Length and Transfer-Encoding" in smuggle
    origin_form = await raw_request(
        tunnel.agent.port, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert origin_form.startswith(b"HTTP/1.1 400 ")
    assert b"proxy" in origin_form
    async with http_origin() as origin, client(tunnel) as http:
        assert (await http.get(url(origin, "/echo"))).status_code == 200


async def test_healthz_reports_the_tunnel(tunnel: Tunnel) -> None:
    async with httpx2.AsyncClient(trust_env=False) as http:
        response = await http.get(f"{tunnel.proxy}/healthz")
    assert response.status_code == 200
    assert response.json()["tunnel"] == "up"
    health_port = tunnel.server.info["health_port"]
    async with httpx2.AsyncClient(trust_env=False) as http:
        server_health = await http.get(f"http://127.0.0.1:{health_port}/healthz")
    assert server_health.json()["status"] == "ok"
    assert server_health.json()["links"] == 1


def _client_context(pki: Pki, cert: str | None, key: str | None, **kw: object) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.path("ca.pem"))
    if cert and key:
        context.load_cert_chain(cert, key)
    if kw.get("tls12"):
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    """Try an mTLS handshake plus one read; return the failure, or None if it worked."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="fluidity-server")
    try:
        with trio.fail_after(10):
            await stream.do_handshake()
            # TLS 1.3 reports a refused client certificate on the first read.
            await stream.send_all(b"\x00\x00\x00\x01\x90")
            data = await stream.receive_some(100)
            return None if data else "closed"
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        return str(exc.__cause__ or exc)
    finally:
        await trio.aclose_forcefully(stream)


async def test_server_refuses_bad_client_certificates(
    pki: Pki, tmp_path: Path, tunnel: Tunnel
) -> None:
    port = tunnel.server.port
    other_ca = create_ca()
    stranger = issue_client_cert(other_ca, "stranger")
    (tmp_path / "stranger.pem").write_bytes(stranger.cert_pem)
    (tmp_path / "stranger-key.pem").write_bytes(stranger.key_pem)
    wrong_ca = _client_context(
        pki, str(tmp_path / "stranger.pem"), str(tmp_path / "stranger-key.pem")
    )
    assert await _handshake(port, wrong_ca) is not None
    assert await _handshake(port, _client_context(pki, None, None)) is not None
    good = (pki.path("client.pem"), pki.path("client-key.pem"))
    assert await _handshake(port, _client_context(pki, *good, tls12=True)) is not None
    log = tunnel.server.log()
    assert log.count("TLS handshake from") >= 3, log
    # The real agent is unaffected by all that.
    async with http_origin() as origin, client(tunnel) as http:
        assert (await http.get(url(origin, "/echo"))).status_code == 200


async def test_server_killed_mid_download_then_agent_reconnects(pki: Pki, tmp_path: Path) -> None:
    args = server_args(pki)
    async with run_fluidity("fluidity.server", args, tmp_path, env=SERVER_ENV) as server:
        port = server.port
        async with run_fluidity("fluidity.agent", agent_args(pki, port), tmp_path) as agent:
            proxy = f"http://127.0.0.1:{agent.port}"
            async with http_origin() as origin:

                async def download_while_killing() -> None:
                    async with (
                        httpx2.AsyncClient(proxy=proxy, trust_env=False, timeout=30) as http,
                        http.stream("GET", url(origin, "/stream?n=500000000")) as response,
                    ):
                        async for piece in response.aiter_raw():
                            if piece and server.process.returncode is None:
                                server.process.kill()

                with pytest.raises(httpx2.TransportError):
                    await download_while_killing()
                # The same port again: the agent keeps retrying it with backoff.
                restart = list(args)
                restart[restart.index("--listen-port") + 1] = str(port)
                async with run_fluidity(
                    "fluidity.server", restart, tmp_path, env=SERVER_ENV, name="server2"
                ):
                    async with httpx2.AsyncClient(proxy=proxy, trust_env=False, timeout=30) as http:
                        response = await http.get(url(origin, "/echo"))
                    assert response.status_code == 200
            assert "tunnel down" in agent.log()


async def test_sigterm_stops_both_processes_cleanly(tunnel: Tunnel) -> None:
    tunnel.agent.signal(signal.SIGTERM)
    tunnel.server.signal(signal.SIGTERM)
    with trio.fail_after(15):
        assert await tunnel.agent.wait() == 0
        assert await tunnel.server.wait() == 0
    assert "agent stopped" in tunnel.agent.log()
    assert "server stopped" in tunnel.server.log()


async def test_proxy_auth(pki: Pki, tmp_path: Path) -> None:
    async with (
        run_fluidity("fluidity.server", server_args(pki), tmp_path, env=SERVER_ENV) as server,
        run_fluidity(
            "fluidity.agent",
            agent_args(pki, server.port, "--proxy-auth", "alice:s3cret"),
            tmp_path,
        ) as agent,
        http_origin() as origin,
    ):
        proxy = f"127.0.0.1:{agent.port}"
        code, out, _ = await curl("-i", "-x", f"http://{proxy}", url(origin, "/echo"))
        assert out.startswith("HTTP/1.1 407")
        assert "Proxy-Authenticate: Basic" in out or "proxy-authenticate: Basic" in out
        code, out, err = await curl("-x", f"http://alice:s3cret@{proxy}", url(origin, "/echo"))
        assert code == 0, err
        assert '"method": "GET"' in out or '"method":"GET"' in out
        assert all(
            n.lower() != b"proxy-authorization" for r in origin.requests for n, _ in r.headers
        )


async def test_agent_refuses_to_bind_off_loopback_without_auth(pki: Pki, tmp_path: Path) -> None:
    async with run_fluidity(
        "fluidity.agent",
        [*agent_args(pki, 1), "--listen-host", "0.0.0.0"],
        tmp_path,
        wait_ready=False,
    ) as agent:
        with trio.fail_after(15):
            code = await agent.wait()
    assert code == 2
    assert "proxy_auth" in agent.log()


def test_make_pki_is_reusable(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "again")
    assert Path(pki.path("ca.pem")).read_text().startswith("-----BEGIN CERTIFICATE-----")


async def test_server_drains_an_open_download_on_sigterm(tunnel: Tunnel) -> None:
    """ECS sends SIGTERM: open streams finish (GoAway first), then the server exits 0."""
    size = 200 * 1024 * 1024
    received = 0
    async with (
        http_origin() as origin,
        client(tunnel) as http,
        http.stream("GET", url(origin, f"/stream?n={size}")) as response,
    ):
        async for piece in response.aiter_raw():
            if not received:
                tunnel.server.signal(signal.SIGTERM)
            received += len(piece)
    assert received == size
    with trio.fail_after(15):
        assert await tunnel.server.wait() == 0
    assert "draining" in tunnel.server.log()


async def test_our_own_answers_carry_a_reason_phrase_and_a_reason_header(tunnel: Tunnel) -> None:
    # 10.255.255.1 is a private address the policy refuses before any connection is made.
    code, _, err = await curl("-v", "-x", tunnel.proxy, "https://10.255.255.1/")
    assert code != 0
    assert "< HTTP/1.1 403 Forbidden" in err
    assert "< x-fluidity-reason: egress-denied" in err
    assert "10.255.255.1/32 to the server's egress_allow" in err, "the CONNECT failure says why"
    async with client(tunnel) as http:
        plain = await http.get("http://10.255.255.1/")
    assert (plain.status_code, plain.reason_phrase) == (403, "Forbidden")
    assert plain.headers["x-fluidity-reason"] == "egress-denied"
    assert "egress_allow" in plain.text
    origin_form = await raw_request(tunnel.agent.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert origin_form.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"x-fluidity-reason: not-a-proxy-request" in origin_form
    assert f"curl -x http://127.0.0.1:{tunnel.agent.port} ".encode() in origin_form


async def test_ctrl_c_is_a_normal_stop_not_a_warning(tunnel: Tunnel) -> None:
    async with http_origin() as origin, client(tunnel) as http:
        assert (await http.get(url(origin, "/echo"))).status_code == 200  # the link is up
    tunnel.server.signal(signal.SIGINT)  # the server drains: GoAway to the agent
    with trio.fail_after(15):
        assert await tunnel.server.wait() == 0
    tunnel.agent.signal(signal.SIGINT)
    with trio.fail_after(15):
        assert await tunnel.agent.wait() == 0
    for process in (tunnel.server, tunnel.agent):
        log = process.log()
        assert "SIGINT received" in log
        assert " WARNING " not in log, log
        assert " ERROR " not in log, log
    assert "tunnel closed: the peer is going away: server shutting down" in tunnel.agent.log()
