"""The GET phase's floor (`tests.bench.floor`): a trio + h11 server alone, run as the bench
runs it, answering keep-alive GETs with the size asked for, as the load generator expects."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.support.processes import run_fluidity

REPO = Path(__file__).resolve().parents[2]


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response's head and body (Content-Length framed) from `stream`."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        assert data, "the floor server closed the connection"
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(buffer) < end + length:
        buffer += await stream.receive_some(65536)
    body = bytes(buffer[end : end + length])
    del buffer[: end + length]
    return head, body


async def test_floor_answers_keepalive_gets_with_the_size_asked(tmp_path: Path) -> None:
    async with run_fluidity(
        "tests.bench.floor", [], tmp_path, env={"PYTHONPATH": str(REPO)}
    ) as floor:
        port = int(floor.info["listen_port"])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            buffer = bytearray()
            for n in (1024, 0, 70_000):
                request = f"GET /stream?n={n} HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n"
                await stream.send_all(request.encode())
                head, body = await read_response(stream, buffer)
                assert head.startswith(b"HTTP/1.1 200 ")
                assert body == b"x" * n
