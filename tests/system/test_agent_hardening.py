"""The agent under abuse, with the real processes: oversized heads, a link that dies under a
tunnel, tunnels nobody uses, too few file descriptors, malformed requests carrying secrets."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from fluidity.processes import stop_process
from fluidity.readyfile import wait_ready_file
from tests.support.curl import curl
from tests.support.origins import (
    http_origin,
    pattern_sha256,
    serve_loopback,
    tcp_echo_origin,
)
from tests.support.pki import Pki
from tests.support.processes import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    Running,
    agent_args,
    run_fluidity,
    server_args,
)

from .helpers import SERVER_ENV, Tunnel, client, open_connect, url

#: Placed in a query string and a Proxy-Authorization header: must never come back.
SECRET = "s3cr3t-t0ken-4f9a"


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything until the peer closes (a reset raises)."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` (not necessarily a whole request) and read until the agent closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_to_end(stream)


# -- A: request heads the tunnel cannot carry ----------------------------------------------------


async def test_oversized_heads_get_414_or_431_while_a_download_goes_on(tunnel: Tunnel) -> None:
    """A head over the server's frame limit costs that request (414 for the target, 431 for
    headers), never the link: a download running through the same agent completes."""
    size = 64 * 1024 * 1024
    digest = hashlib.sha256()
    long_url = "/echo?" + "a" * 70_000
    with trio.fail_after(90):
        async with (
            http_origin() as origin,
            client(tunnel) as http,
            http.stream("GET", url(origin, f"/stream?n={size}")) as download,
        ):
            pieces = download.aiter_raw()
            digest.update(await anext(pieces))

            code, out, err = await curl("-i", "-x", tunnel.proxy, url(origin, long_url))
            assert code == 0, err
            assert out.startswith("HTTP/1.1 414 "), out[:300]
            assert "URI Too Long" in out
            assert "connection: close" in out.lower()

            big_header = "X-Big: " + "b" * 70_000
            code, out, err = await curl("-i", "-x", tunnel.proxy, "-H", big_header,
                                        url(origin, "/echo"))  # fmt: skip
            assert code == 0, err
            assert out.startswith("HTTP/1.1 431 "), out[:300]
            assert "connection: close" in out.lower()

            # A WebSocket upgrade with a header too large for a frame.
            upgrade = (
                f"GET ws://origin.test:{origin.port}/chat HTTP/1.1\r\n"
                f"Host: origin.test:{origin.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\n{big_header}\r\n\r\n"
            ).encode()
            answer = await raw_exchange(tunnel.agent.port, upgrade)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]

            # Heads still growing past the limit are refused while they are read.
            line = f"GET http://origin.test:{origin.port}{long_url}".encode()
            answer = await raw_exchange(tunnel.agent.port, line)
            assert answer.startswith(b"HTTP/1.1 414 "), answer[:300]
            unfinished = (
                f"GET http://origin.test:{origin.port}/echo HTTP/1.1\r\n"
                f"Host: origin.test\r\n{big_header}"
            ).encode()
            answer = await raw_exchange(tunnel.agent.port, unfinished)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
            # Over the limit before the port: the CONNECT line gets 414 too.
            answer = await raw_exchange(tunnel.agent.port, b"CONNECT " + b"h" * 70_000)
            assert answer.startswith(b"HTTP/1.1 414 "), answer[:300]

            async for piece in pieces:
                digest.update(piece)
            after = await http.get(url(origin, "/echo"))
    assert digest.hexdigest() == pattern_sha256(size), "the download was cut"
    assert after.status_code == 200
    assert not any(len(r.target) > 60_000 for r in origin.requests)
    log = tunnel.agent.log()
    assert "tunnel down" not in log, log
    assert "Traceback" not in log, log
    assert "FRAME_SIZE" not in tunnel.server.log()


# -- B: a tunnel cut short must look cut short ---------------------------------------------------


@asynccontextmanager
async def endless_origin() -> AsyncIterator[int]:
    """A TCP origin that sends bytes until the connection breaks."""

    async def handle(tcp: trio.SocketStream) -> None:
        chunk = b"x" * 65536
        try:
            while True:
                await tcp.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with serve_loopback(handle) as port:
        yield port


async def _outcome(stream: trio.SocketStream) -> str:
    """How a stream that was receiving ends: "eof" (a clean end) or the error's name."""
    try:
        await read_to_end(stream)
    except trio.BrokenResourceError as exc:
        return type(exc.__cause__).__name__
    return "eof"


async def test_a_dying_link_resets_client_connections(pki: Pki, tmp_path: Path) -> None:
    """The server dies mid-transfer: the CONNECT client and the plain HTTP client both get
    a TCP reset, never an end of stream that looks like the end of the data."""
    with trio.fail_after(60):
        async with (
            run_fluidity("fluidity.server", server_args(pki), tmp_path, env=SERVER_ENV) as server,
            run_fluidity("fluidity.agent", agent_args(pki, server.port), tmp_path) as agent,
            endless_origin() as endless_port,
            http_origin() as origin,
        ):
            tunnel, head = await open_connect(
                Tunnel(server, agent, tmp_path), f"origin.test:{endless_port}"
            )
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await tunnel.receive_some(65536)
            plain = await trio.open_tcp_stream("127.0.0.1", agent.port)
            await plain.send_all(
                f"GET http://origin.test:{origin.port}/stream?n=1000000000 HTTP/1.1\r\n"
                f"Host: origin.test:{origin.port}\r\n\r\n".encode()
            )
            assert (await plain.receive_some(65536)).startswith(b"HTTP/1.1 200 ")

            server.process.kill()
            async with tunnel, plain:
                assert await _outcome(tunnel) == "ConnectionResetError"
                assert await _outcome(plain) == "ConnectionResetError"
    assert "tunnel to origin.test" in agent.log()


# -- C: tunnels nobody uses ---------------------------------------------------------------------


@attrs.define
class SilentOrigin:
    """Accepts, reads, never writes: what a hung or forgotten peer looks like."""

    port: int = 0
    #: Set once a connection's input has ended (the other side closed or reset it).
    ended: trio.Event = attrs.field(factory=trio.Event)


@asynccontextmanager
async def silent_origin() -> AsyncIterator[SilentOrigin]:
    origin = SilentOrigin()

    async def handle(tcp: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while await tcp.receive_some(65536):
                pass
        origin.ended.set()
        await trio.sleep_forever()  # an EOF is not a reason for this peer to close

    async with serve_loopback(handle) as origin.port:
        yield origin


@asynccontextmanager
async def tunnel_with(pki: Pki, tmp_path: Path, *agent_flags: str) -> AsyncIterator[Tunnel]:
    async with (
        run_fluidity("fluidity.server", server_args(pki), tmp_path, env=SERVER_ENV) as srv,
        run_fluidity("fluidity.agent", agent_args(pki, srv.port, *agent_flags), tmp_path) as agt,
    ):
        try:
            yield Tunnel(srv, agt, tmp_path)
        finally:
            print(f"--- server log ---\n{srv.log()}\n--- agent log ---\n{agt.log()}")


async def test_tunnels_end_when_idle_or_half_closed_and_silent(pki: Pki, tmp_path: Path) -> None:
    flags = ("--tunnel-idle-timeout", "1.5", "--half-closed-timeout", "0.5")
    with trio.fail_after(60):
        async with tunnel_with(pki, tmp_path, *flags) as tunnel, silent_origin() as origin:
            # Nothing either way: the agent closes the tunnel after tunnel_idle_timeout, and
            # the server's side of it goes too (the origin sees its connection end).
            idle, head = await open_connect(tunnel, f"origin.test:{origin.port}")
            assert head.startswith(b"HTTP/1.1 200 ")
            start = trio.current_time()
            async with idle:
                assert await read_to_end(idle) == b""
            assert trio.current_time() - start >= 1.4
            await origin.ended.wait()
            assert "no bytes either way for 1.5 s (tunnel_idle_timeout)" in tunnel.agent.log()

            # The client sent its EOF and the origin says nothing: half_closed_timeout.
            half, head = await open_connect(tunnel, f"origin.test:{origin.port}")
            assert head.startswith(b"HTTP/1.1 200 ")
            async with half:
                await half.send_all(b"last words")
                await half.send_eof()
                assert await read_to_end(half) == b""
            assert "(half_closed_timeout)" in tunnel.agent.log()

            # Bytes moving keep a tunnel open well past tunnel_idle_timeout.
            async with tcp_echo_origin() as echo:
                busy, head = await open_connect(tunnel, f"origin.test:{echo.port}")
                async with busy:
                    assert head.startswith(b"HTTP/1.1 200 ")
                    start = trio.current_time()
                    while trio.current_time() - start < 3.5:
                        await busy.send_all(b"ping")
                        assert await busy.receive_some(4) == b"ping"
                        await trio.sleep(0.3)  # the traffic's pace, not a wait for an event
                    await busy.send_eof()
                    assert (await read_to_end(busy)).endswith(b"-- end of echo --")
                assert echo.endings == ["eof"]


# -- D: too few file descriptors -----------------------------------------------------------------


@asynccontextmanager
async def agent_with_fd_limit(
    pki: Pki, server_port: int, workdir: Path, limit: int
) -> AsyncIterator[Running]:
    """The agent under `prlimit --nofile=limit`, like run_fluidity otherwise."""
    ready = workdir / "limited-agent-ready.json"
    log_path = workdir / "limited-agent.log"
    argv = [
        "prlimit", f"--nofile={limit}:{limit}", "--",
        sys.executable, "-m", "fluidity.agent", *agent_args(pki, server_port),
        "--ready-file", str(ready),
    ]  # fmt: skip
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - a local file, opened once
        process = await trio.lowlevel.open_process(argv, stdout=log_file, stderr=subprocess.STDOUT)
    running = Running("limited-agent", process, log_path, {})
    try:
        with trio.fail_after(START_TIMEOUT):
            info = await wait_ready_file(ready, process)
        assert info is not None, running.log()
        running.info = info
        yield running
    finally:
        await stop_process(process, STOP_TIMEOUT)
        print(f"--- agent log ---\n{running.log()}")


async def test_idle_connections_cannot_starve_a_request(pki: Pki, tmp_path: Path) -> None:
    """With 64 descriptors, 80 idle client connections: the agent serves at most what fits,
    closes the oldest idle ones to make room, and a real request still goes through."""
    with trio.fail_after(60):
        async with (
            run_fluidity("fluidity.server", server_args(pki), tmp_path, env=SERVER_ENV) as srv,
            agent_with_fd_limit(pki, srv.port, tmp_path, 64) as agent,
            http_origin() as origin,
        ):
            assert "serving at most 32 client connections" in agent.log()
            idle = []
            for _ in range(80):
                idle.append(await trio.open_tcp_stream("127.0.0.1", agent.port))
            code, out, err = await curl(
                "--max-time", "10", "-x", f"http://127.0.0.1:{agent.port}", url(origin, "/echo")
            )
            assert code == 0, err
            assert '"method": "GET"' in out
            # The oldest idle connections were closed to make room.
            assert await read_to_end(idle[0]) == b""
            for stream in idle:
                await stream.aclose()
    assert "accept failed" not in agent.log()


# -- E: client bytes stay out of logs and answers ------------------------------------------------


async def test_malformed_requests_never_echo_their_bytes(pki: Pki, tmp_path: Path) -> None:
    """The 400 says what kind of error it was and the log adds a length; neither repeats
    the request's bytes (here a secret in the query and in Proxy-Authorization)."""
    async with http_origin() as origin:
        answers, log = await _send_malformed(pki, tmp_path, f"origin.test:{origin.port}")
    for answer in answers[:3]:
        assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"malformed header line" in answers[0]
    assert b"malformed header line" in answers[1]
    assert b"malformed request line" in answers[2]
    assert answers[4].startswith(b"HTTP/1.1 400 ")
    for answer in answers:
        assert SECRET.encode() not in answer
    assert "refused a request from 127.0.0.1" in log
    assert "malformed chunked body" in log
    assert "DEBUG" in log, "the agent logged at debug level"
    assert SECRET not in log


async def _send_malformed(pki: Pki, tmp_path: Path, where: str) -> tuple[list[bytes], str]:
    malformed = [
        # A header line without a colon.
        f"GET http://origin.test/?q={SECRET} HTTP/1.1\r\nHost: origin.test\r\n"
        f"Proxy-Authorization: Basic {SECRET}\r\nbroken {SECRET}\r\n\r\n",
        # A NUL in a header value.
        f"GET http://origin.test/?q={SECRET} HTTP/1.1\r\nHost: origin.test\r\n"
        f"Proxy-Authorization: Basic {SECRET}\x00\r\n\r\n",
        # A request line that is not one.
        f"GET http://origin.test/?q={SECRET} HTTP/9.9 {SECRET}\r\n\r\n",
        # A malformed chunked body after a good head.
        f"POST http://{where}/upload?q={SECRET} HTTP/1.1\r\nHost: origin.test\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n{SECRET}\r\n",
        # An unsupported scheme.
        f"GET {SECRET}://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    ]
    answers = []
    with trio.fail_after(60):
        async with tunnel_with(pki, tmp_path, "--log-level", "debug") as tunnel:
            for request in malformed:
                answers.append(await raw_exchange(tunnel.agent.port, request.encode()))
            return answers, tunnel.agent.log()
