"""Prometheus metrics and the access log of the real agent and server processes, after real
traffic through them (curl, httpx, raw CONNECT, a WebSocket client)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx2
import trio
from python_socks.async_.trio import Proxy as SocksProxy

from tests.support.curl import curl
from tests.support.origins import (
    ECHO_TRAILER,
    http_origin,
    pattern_bytes,
    tcp_echo_origin,
    websocket_origin,
)
from tests.support.pki import Pki
from tests.support.processes import Running, agent_args, run_fluidity, server_args
from tests.support.scrape import Samples, scrape
from tests.support.wsclient import proxied_websocket

from .helpers import SERVER_ENV, Tunnel, echo_round_trip, open_connect

POLL = 0.02
AGENT = "fluidity_agent"
SERVER = "fluidity_server"


def health_port(tunnel: Tunnel) -> int:
    return int(tunnel.server.info["health_port"])


async def connect_echo(tunnel: Tunnel, port: int, payload: bytes) -> bytes:
    """CONNECT to the echo origin, send `payload` and EOF; everything that came back."""
    stream, head = await open_connect(tunnel, f"origin.test:{port}")
    async with stream:
        assert head.startswith(b"HTTP/1.1 200 "), head
        await stream.send_all(payload)
        await stream.send_eof()
        received = bytearray()
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)


async def settled(port: int, name: str, want: float, **labels: str) -> Samples:
    """Scrape until `name{labels}` reaches `want` (a stream is counted when its handler
    returns, a moment after the client saw the end); the scrape that showed it."""
    while True:
        samples = await scrape(port)
        if samples.get(name, **labels) >= want:
            return samples
        await trio.sleep(POLL)


async def logged(*checks: tuple[Running, str]) -> None:
    """Wait until each process's log holds its text (a line is written as a tunnel ends
    both ways, a moment after the client saw the end)."""
    while True:
        if all(text in running.log() for running, text in checks):
            return
        await trio.sleep(POLL)


async def test_counters_move_by_the_traffic_through_both_processes(tunnel: Tunnel) -> None:
    agent_port, server_port = tunnel.agent.port, health_port(tunnel)
    upload = pattern_bytes(300_000)
    tunnelled = pattern_bytes(100_000)
    with trio.fail_after(60):
        agent_before, server_before = await scrape(agent_port), await scrape(server_port)
        started = time.time()
        async with (
            http_origin() as origin,
            tcp_echo_origin() as echo,
            websocket_origin() as ws_origin,
            httpx2.AsyncClient(proxy=tunnel.proxy, trust_env=False, timeout=30) as http,
        ):
            base = f"http://origin.test:{origin.port}"
            code, out, err = await curl(
                "-x", tunnel.proxy, "-o", "/dev/null", "-w", "%{size_download}",
                f"{base}/stream?n=5000",
            )  # fmt: skip
            assert (code, out) == (0, "5000"), err
            posted = await http.post(f"{base}/upload", content=upload)
            missing = await http.get(f"{base}/status/404")
            assert (posted.status_code, missing.status_code) == (200, 404)
            echoed = await connect_echo(tunnel, echo.port, tunnelled)
            assert echoed == tunnelled + ECHO_TRAILER
            # A private address, refused by the egress policy before any connection.
            stream, head = await open_connect(tunnel, "10.0.0.1:443")
            await stream.aclose()
            assert head.startswith(b"HTTP/1.1 403 "), head
            async with proxied_websocket(agent_port, f"ws://origin.test:{ws_origin.port}/") as ws:
                await ws.send("hello")
                assert await ws.receive() == "hello"
                await ws.close()
            await ws_origin.wait_closes(1)

        agent = await settled(agent_port, f"{AGENT}_requests_total", 1, kind="websocket",
                              outcome="ok")  # fmt: skip
        server = await settled(server_port, f"{SERVER}_requests_total", 1, kind="websocket",
                               outcome="ok")  # fmt: skip

    http_down = 5000 + len(posted.content) + len(missing.content)
    expected = {
        ("requests_total", "http", "2xx"): 2,
        ("requests_total", "http", "4xx"): 1,
        ("requests_total", "connect", "ok"): 1,
        ("requests_total", "connect", "4xx"): 1,
        ("requests_total", "websocket", "ok"): 1,
        ("stream_bytes_total", "http", "upload"): len(upload),
        ("stream_bytes_total", "http", "download"): http_down,
        ("stream_bytes_total", "connect", "upload"): len(tunnelled),
        ("stream_bytes_total", "connect", "download"): len(tunnelled) + len(ECHO_TRAILER),
        ("stream_bytes_total", "websocket", "upload"): 5,
        ("stream_bytes_total", "websocket", "download"): 5,
    }
    for prefix, now, before in ((AGENT, agent, agent_before), (SERVER, server, server_before)):
        for (metric, kind, label), want in expected.items():
            labels = {"kind": kind, "outcome" if metric == "requests_total" else "direction": label}
            got = now.delta(before, f"{prefix}_{metric}", **labels)
            assert got == want, f"{prefix}_{metric}{labels}: moved by {got}, not {want}"
        assert now.get(f"{prefix}_requests_total", kind="http", outcome="error") == 0
        # The links carry the payload plus framing: at least as much, not much more.
        moved_up = now.delta(before, f"{prefix}_link_bytes_total", direction="upload")
        moved_down = now.delta(before, f"{prefix}_link_bytes_total", direction="download")
        payload_up = len(upload) + len(tunnelled) + 5
        payload_down = http_down + len(tunnelled) + len(ECHO_TRAILER) + 5
        assert payload_up <= moved_up < payload_up + 20_000, (prefix, moved_up)
        assert payload_down <= moved_down < payload_down + 20_000, (prefix, moved_down)
        assert now.get(f"{prefix}_open_streams") == 0
        assert 0 < now.get(f"{prefix}_link_rtt_seconds") < 1

    assert agent.get(f"{AGENT}_link_up") == 1
    assert agent.get(f"{AGENT}_tunnel_state", state="up") == 1
    assert agent.get(f"{AGENT}_tunnel_state", state="down") == 0
    assert agent.get(f"{AGENT}_reconnects_total") == 0
    assert not agent.has(f"{AGENT}_wake_duration_seconds_count") or (
        agent.get(f"{AGENT}_wake_duration_seconds_count") == 0
    ), "no control plane: nothing woke the server"
    assert server.get(f"{SERVER}_links") == 1
    assert server.get(f"{SERVER}_links_opened_total") == 1
    assert server.get(f"{SERVER}_last_activity_timestamp_seconds") >= started
    # The access log is off by default.
    assert "fluidity.agent.access" not in tunnel.agent.log()
    assert "fluidity.server.access" not in tunnel.server.log()


async def test_metrics_pages_answer_only_loopback_hosts_and_speak_openmetrics(
    tunnel: Tunnel,
) -> None:
    agent = f"http://127.0.0.1:{tunnel.agent.port}/metrics"
    server = f"http://127.0.0.1:{health_port(tunnel)}/metrics"
    openmetrics = {"accept": "application/openmetrics-text; version=1.0.0"}
    with trio.fail_after(30):
        async with httpx2.AsyncClient(trust_env=False, timeout=10) as http:
            # DNS rebinding: a page whose own name resolves to 127.0.0.1 names itself.
            rebound = await http.get(agent, headers={"host": "attacker.example"})
            agent_om = await http.get(agent, headers=openmetrics)
            server_om = await http.get(server, headers=openmetrics)
            nothing = await http.get(f"http://127.0.0.1:{health_port(tunnel)}/other")
    assert rebound.status_code == 421
    assert "fluidity_agent" not in rebound.text
    for response, prefix in ((agent_om, AGENT), (server_om, SERVER)):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")
        assert f"{prefix}_requests_total" in response.text or f"# TYPE {prefix}_requests " in (
            response.text
        )
    assert nothing.status_code == 404


async def test_reconnects_and_handshake_failures_are_counted(pki: Pki, tmp_path: Path) -> None:
    args = server_args(pki)
    with trio.fail_after(60):
        async with run_fluidity("fluidity.server", args, tmp_path, env=SERVER_ENV) as server:
            port, health = server.port, int(server.info["health_port"])
            async with run_fluidity("fluidity.agent", agent_args(pki, port), tmp_path) as agent:
                await settled(agent.port, f"{AGENT}_link_up", 1)
                # Not TLS at all: the server counts a failed handshake.
                async with await trio.open_tcp_stream("127.0.0.1", port) as garbage:
                    await garbage.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    with contextlib.suppress(trio.BrokenResourceError):
                        while await garbage.receive_some(1024):
                            pass  # a TLS alert, then the server's close
                counted = await settled(health, f"{SERVER}_handshake_failures_total", 1,
                                        cause="tls")  # fmt: skip
                assert counted.get(f"{SERVER}_links_opened_total") == 1

                server.process.kill()
                await server.wait()
                # The agent retries a closed port: refused, counted by cause.
                down = await settled(agent.port, f"{AGENT}_handshake_failures_total", 1,
                                     cause="refused")  # fmt: skip
                assert down.get(f"{AGENT}_link_up") == 0
                assert down.get(f"{AGENT}_open_streams") == 0
                assert not down.has(f"{AGENT}_link_rtt_seconds")
                restart = list(args)
                restart[restart.index("--listen-port") + 1] = str(port)
                async with run_fluidity(
                    "fluidity.server", restart, tmp_path, env=SERVER_ENV, name="server2"
                ):
                    up = await settled(agent.port, f"{AGENT}_reconnects_total", 1)
                    assert up.get(f"{AGENT}_link_up") == 1
                    assert up.get(f"{AGENT}_tunnel_state", state="up") == 1
                    # The first link's bytes stay counted: the totals never go back.
                    assert up.get(f"{AGENT}_link_bytes_total", direction="upload") >= down.get(
                        f"{AGENT}_link_bytes_total", direction="upload"
                    )


def _json_lines(text: str, logger: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and f'"logger": "{logger}"' in line:
            lines.append(json.loads(line))
    return lines


async def test_access_log_lines_say_what_happened_and_nothing_secret(
    pki: Pki, tmp_path: Path
) -> None:
    secrets = ("query-secret-4e1f", "bearer-secret-9a2c", "proxy-secret-77d0", "userinfo-secret")
    agent_flags = ("--access-log", "--log-format", "json", "--socks-port", "0")
    with trio.fail_after(60):
        async with (
            run_fluidity(
                "fluidity.server", server_args(pki, "--access-log"), tmp_path, env=SERVER_ENV
            ) as server,
            run_fluidity(
                "fluidity.agent", agent_args(pki, server.port, *agent_flags), tmp_path
            ) as agent,
            http_origin() as origin,
            tcp_echo_origin() as echo,
        ):
            proxy = f"http://127.0.0.1:{agent.port}"
            code, out, err = await curl(
                "-x", proxy,
                "-H", f"Authorization: Bearer {secrets[1]}",
                "-H", f"Proxy-Authorization: Basic {secrets[2]}",
                f"http://origin.test:{origin.port}/missing?token={secrets[0]}",
            )  # fmt: skip
            assert code == 0, err
            assert out == "no such route\n"
            # User-info in the request target: refused, and logged without it.
            raw = await trio.open_tcp_stream("127.0.0.1", agent.port)
            target = f"http://user:{secrets[3]}@origin.test:{origin.port}/echo"
            await raw.send_all(f"GET {target} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode())
            answer = await raw.receive_some(65536)
            await raw.aclose()
            tunnel = Tunnel(server, agent, tmp_path)
            assert await connect_echo(tunnel, echo.port, b"ping") == b"ping" + ECHO_TRAILER
            await logged((server, "kind=connect"), (agent, '"kind": "connect"'))
            # A SOCKS tunnel: kind socks at the agent, a Connect stream at the server.
            socks = SocksProxy.from_url(f"socks5://127.0.0.1:{agent.info['socks_port']}")
            stream = trio.SocketStream(await socks.connect("origin.test", echo.port, timeout=20))
            async with stream:
                assert await echo_round_trip(stream, b"socks!") == b"socks!" + ECHO_TRAILER
            await logged((agent, '"kind": "socks"'))
            socks_line = _json_lines(agent.log(), "fluidity.agent.access")[-1]
            await logged((server, f"stream={socks_line['stream']}"))

    agent_lines = _json_lines(agent.log(), "fluidity.agent.access")
    get, refused, tunnelled, socksed = agent_lines
    assert get["message"] == "request"
    assert {k: get[k] for k in ("kind", "method", "host", "status", "outcome")} == {
        "kind": "http",
        "method": "GET",
        "host": f"origin.test:{origin.port}",
        "status": 404,
        "outcome": "4xx",
    }
    assert (get["upload_bytes"], get["download_bytes"]) == (0, len(out))
    assert get["duration_ms"] >= 0
    assert isinstance(get["stream"], int)
    assert get["client"].startswith("127.0.0.1:")
    assert refused["host"] == f"origin.test:{origin.port}"
    assert refused["status"] == int(answer.split(b" ", 2)[1])
    assert refused["stream"] is None
    assert tunnelled["message"] == "tunnel"
    assert tunnelled["kind"] == "connect"
    assert (tunnelled["method"], tunnelled["status"], tunnelled["outcome"]) == (
        "CONNECT",
        200,
        "ok",
    )
    assert (tunnelled["upload_bytes"], tunnelled["download_bytes"]) == (4, 4 + len(ECHO_TRAILER))
    assert tunnelled["host"] == f"origin.test:{echo.port}"

    assert (socksed["message"], socksed["kind"], socksed["method"]) == (
        "tunnel",
        "socks",
        "CONNECT",
    )
    assert (socksed["status"], socksed["outcome"]) == (200, "ok")
    assert (socksed["upload_bytes"], socksed["download_bytes"]) == (6, 6 + len(ECHO_TRAILER))
    assert socksed["host"] == f"origin.test:{echo.port}"

    # The server's lines (text format) carry the same stream ids.
    server_lines = [line for line in server.log().splitlines() if "fluidity.server.access" in line]
    assert len(server_lines) == 3, server_lines
    assert (
        f"request kind=http method=GET host=origin.test:{origin.port} status=404 outcome=4xx "
        f"upload_bytes=0 download_bytes={len(out)} "
    ) in server_lines[0]
    assert server_lines[0].endswith(f" stream={get['stream']}")
    assert (
        f"tunnel kind=connect method=CONNECT host=origin.test:{echo.port} status=200"
        in (server_lines[1])
    )
    assert server_lines[1].endswith(f" stream={tunnelled['stream']}")
    assert f"tunnel kind=connect method=CONNECT host=origin.test:{echo.port}" in server_lines[2]
    assert server_lines[2].endswith(f" stream={socksed['stream']}")
    for secret in secrets:
        assert secret not in agent.log()
        assert secret not in server.log()
