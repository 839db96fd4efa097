"""Connect streams: raw TCP relays, half-close, TLS end to end, refusals."""

from __future__ import annotations

import hashlib
from functools import partial

import pytest
import trio
import trio.testing

from fluidity.protocol import ErrorCode
from fluidity.server.egress import EgressPolicy
from fluidity.tunnel import StreamReset, TunnelStream
from tests.server.harness import TunnelByteStream, open_connect, read_all, send_body, serving
from tests.support.memory import large_blocks_left
from tests.support.origins import (
    ECHO_TRAILER,
    HTTPOrigin,
    TCPOrigin,
    pattern_chunks,
    serve_loopback,
)
from tests.support.pki import TestTLS

MB = 1024 * 1024


async def test_relay_with_half_close_both_ways(echo_origin: TCPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream, ack = await open_connect(env.agent, "127.0.0.1", echo_origin.port)
            assert (ack.status, ack.error) == (200, "")
            async with stream:
                await stream.send_all(b"hello ")
                await stream.send_all(b"world")
                await stream.send_eof()  # -> the origin sees EOF, answers, then closes
                echoed = await read_all(stream)
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert echoed == b"hello world" + ECHO_TRAILER
    assert echo_origin.endings == ["eof"]


async def test_relay_moves_megabytes_both_ways_concurrently(echo_origin: TCPOrigin) -> None:
    n = 8 * MB
    with trio.fail_after(20):
        async with serving() as env:
            stream, _ = await open_connect(env.agent, "origin.test", echo_origin.port)
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(send_body, stream, pattern_chunks(n, 40_000))
                echoed = await read_all(stream)
    assert len(echoed) == n + len(ECHO_TRAILER)
    expected = hashlib.sha256(b"".join(pattern_chunks(n)) + ECHO_TRAILER).hexdigest()
    assert hashlib.sha256(echoed).hexdigest() == expected


async def test_tls_handshake_through_the_tunnel(tls_origin: HTTPOrigin, tls: TestTLS) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream, ack = await open_connect(env.agent, "127.0.0.1", tls_origin.port)
            assert ack.success
            client = trio.SSLStream(
                TunnelByteStream(stream),
                tls.client,
                server_hostname="origin.test",
                https_compatible=True,  # the origin closes without close_notify, like many
            )
            await client.do_handshake()
            await client.send_all(
                b"GET /echo HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
            )
            response = bytearray()
            while data := await client.receive_some():
                response += data
            await client.aclose()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'"target": "/echo"' in response


async def test_agent_reset_closes_the_origin_connection(echo_origin: TCPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", echo_origin.port)
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            assert env.activity.active == 1
            stream.reset(ErrorCode.CANCEL, "client went away")
            while not echo_origin.endings:
                await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert len(echo_origin.endings) == 1


async def test_origin_failure_resets_the_stream(origin: HTTPOrigin) -> None:
    """/truncate closes the socket; the origin's EOF comes through, then writing on fails."""

    async def write_on(stream: TunnelStream) -> None:
        for _ in range(100):
            await stream.send_all(b"x" * 65536)
            await trio.testing.wait_all_tasks_blocked()

    with trio.fail_after(10):
        async with serving() as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", origin.port)
            async with stream:
                await stream.send_all(b"GET /truncate?n=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
                data = await read_all(stream)
                assert data.startswith(b"HTTP/1.1 200")
                with pytest.raises(StreamReset) as caught:
                    await write_on(stream)
    assert caught.value.code == ErrorCode.UPSTREAM_ERROR


async def test_a_reset_after_half_close_closes_the_upstream_side(origin: HTTPOrigin) -> None:
    """Nothing reads the stream once the agent sent EOF; the reset must still be noticed."""
    with trio.fail_after(10):
        async with serving() as env:
            stream, _ = await open_connect(env.agent, "127.0.0.1", origin.port)
            await stream.send_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            await stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 1
            stream.reset()
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0


async def test_refused_port_is_a_502_ack() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with serving() as env:
            _, ack = await open_connect(env.agent, "127.0.0.1", port)
    assert (ack.status, ack.error) == (502, f"connection to 127.0.0.1:{port} refused")


async def test_denied_destinations_are_403_acks(echo_origin: TCPOrigin) -> None:
    with trio.fail_after(10):
        async with serving(EgressPolicy()) as env:
            _, loopback = await open_connect(env.agent, "127.0.0.1", echo_origin.port)
            _, metadata = await open_connect(env.agent, "metadata.test", 80)
            _, unspecified = await open_connect(env.agent, "0.0.0.0", echo_origin.port)
    assert loopback.status == metadata.status == unspecified.status == 403
    assert metadata.error == (
        "destination metadata.test (169.254.169.254) is not allowed by the egress policy "
        "(local, link-local and private addresses are refused unless egress_allow lists them); "
        "to reach it, add 169.254.169.254/32 to the server's egress_allow (FLUIDITY_EGRESS_ALLOW)"
    )
    assert echo_origin.connections == 0


async def test_unknown_host_is_a_502_ack() -> None:
    with trio.fail_after(10):
        async with serving() as env:
            _, ack = await open_connect(env.agent, "nowhere.test", 443)
    assert (ack.status, ack.error) == (502, "could not resolve host nowhere.test")


async def test_idle_tunnels_keep_none_of_the_bytes_they_relayed() -> None:
    """Once a chunk is relayed it is released: 32 tunnels that each echoed 64 KiB and went
    quiet hold none of it (a relay loop's variable kept the last chunk while it waited for
    the next one: 64 KiB per tunnel, a thousand idle tunnels 64 MB)."""
    tunnels, size = 32, 64 * 1024

    async def echo(tcp: trio.SocketStream) -> None:
        while data := await tcp.receive_some(size):
            await tcp.send_all(data)
            del data

    async def round_trip(stream: TunnelStream) -> None:
        await stream.send_all(bytes(size))
        echoed = 0
        while echoed < size:
            echoed += len(await stream.receive_some())

    with trio.fail_after(20):
        async with serve_loopback(echo) as port, serving() as env:
            streams = [
                (await open_connect(env.agent, "127.0.0.1", port))[0] for _ in range(tunnels)
            ]
            held = await large_blocks_left(partial(round_trip, stream) for stream in streams)
            for stream in streams:
                await stream.aclose()
    # Nothing of a chunk's size is left: no relay's last chunk, no link's last read, write
    # batch or decoder buffer.
    assert sum(trace.size for trace in held) < size, [str(t.traceback) for t in held]


def count_tasks() -> int:
    """Every task of the run, counted from the root task down."""
    tasks = [trio.lowlevel.current_root_task()]
    count = 0
    while tasks:
        task = tasks.pop()
        count += 1
        for nursery in task.child_nurseries:
            tasks.extend(nursery.child_tasks)
    return count


async def test_an_open_tunnel_runs_one_task_per_direction(echo_origin: TCPOrigin) -> None:
    """The idle limit is a deadline that moves with the bytes, not a task per tunnel: what a
    thousand open tunnels cost the server is two tasks each."""
    with trio.fail_after(10):
        async with serving() as env:
            await trio.testing.wait_all_tasks_blocked()
            before = count_tasks()
            streams = [(await open_connect(env.agent, "127.0.0.1", echo_origin.port))[0]
                       for _ in range(10)]  # fmt: skip
            await trio.testing.wait_all_tasks_blocked()
            # Two of the server's, and the (in-process) origin's handler.
            assert count_tasks() - before == 3 * len(streams)
            for stream in streams:
                await stream.aclose()
