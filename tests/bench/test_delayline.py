"""The WAN bench's delay line (`tests.bench.delayline`), run as its own process, with a real
TCP client through it to the echo origin on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.support.origins import ECHO_TRAILER, tcp_echo_origin
from tests.support.processes import Running, run_fluidity

REPO = Path(__file__).resolve().parents[2]
RTT = 0.04
RATE = 10_000_000  # bytes per second (80 Mbit/s)
QUEUE = 256 * 1024


def line_args(target_port: int) -> list[str]:
    return [
        "--forward", str(target_port),
        "--rtt-ms", str(RTT * 1000),
        "--rate-mbit", str(RATE * 8 / 1e6),
        "--queue-bytes", str(QUEUE),
    ]  # fmt: skip


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[Running]:
    """A delay line (RTT 40 ms, 80 Mbit/s, 256 KiB queue) in front of the TCP echo origin."""
    async with (
        tcp_echo_origin() as origin,
        run_fluidity(
            "tests.bench.delayline",
            line_args(origin.port),
            tmp_path,
            env={"PYTHONPATH": str(REPO)},
            name="delayline",
        ) as running,
    ):
        yield running


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"the delay line closed after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


async def test_round_trips_take_the_rtt_and_bytes_arrive_intact_in_order(line: Running) -> None:
    with trio.fail_after(10):
        start = trio.current_time()
        stream = await trio.open_tcp_stream("127.0.0.1", line.port)
        async with stream:
            await stream.send_all(b"x")
            assert await receive_exactly(stream, 1) == b"x"
            first = trio.current_time() - start
            # The emulated handshake, then the bytes' own round trip.
            assert first >= 2 * RTT, f"a fresh connection's first echo took {first:.3f} s"

            start = trio.current_time()
            await stream.send_all(b"y")
            assert await receive_exactly(stream, 1) == b"y"
            again = trio.current_time() - start
            assert again >= RTT, f"a round trip took {again:.3f} s"

            payload = os.urandom(1_000_000)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    await stream.send_all(payload)
                    await stream.send_eof()

                nursery.start_soon(send)
                received = bytearray()
                while chunk := await stream.receive_some(65536):
                    received += chunk
            took = trio.current_time() - start
    # The half-close crossed the line: the origin answered it with its trailer, then closed.
    assert received == payload + ECHO_TRAILER, "bytes lost, changed or reordered"
    assert took >= len(payload) / RATE + RTT, f"1 MB crossed 80 Mbit/s in {took:.3f} s"


async def test_a_full_queue_stops_reading_the_sender(line: Running) -> None:
    """Beyond the queue the sender must wait: 64 MB cannot leave at 10 MB/s in half a second
    (a relay that read without bound would take it all at loopback speed)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", line.port)
        async with stream:
            with trio.move_on_after(0.5) as waited:
                await stream.send_all(bytes(64_000_000))
            assert waited.cancelled_caught, "the delay line took 64 MB past a 256 KiB queue"
            await trio.aclose_forcefully(stream)
