"""Helpers of the system tests: the running pair of processes, and ways to reach it."""

from __future__ import annotations

from pathlib import Path

import attrs
import httpx2
import trio

from tests.support.origins import HTTPOrigin
from tests.support.processes import SERVER_TEST_ENV, Running


@attrs.frozen
class Tunnel:
    server: Running
    agent: Running
    workdir: Path

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}"


#: A short upstream read timeout so the hanging-origin test answers 504 quickly.
SERVER_ENV = {**SERVER_TEST_ENV, "FLUIDITY_UPSTREAM_READ_TIMEOUT": "3"}


def url(origin: HTTPOrigin, path: str) -> str:
    return f"http://origin.test:{origin.port}{path}"


def client(tunnel: Tunnel) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(proxy=tunnel.proxy, trust_env=False, timeout=60)


async def open_connect(tunnel: Tunnel, authority: str) -> tuple[trio.SocketStream, bytes]:
    """A raw CONNECT through the agent; returns the stream and the response head."""
    stream = await trio.open_tcp_stream("127.0.0.1", tunnel.agent.port)
    await stream.send_all(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        assert chunk, f"proxy closed during the CONNECT answer: {head!r}"
        head += chunk
    return stream, head


async def echo_round_trip(stream: trio.SocketStream, payload: bytes) -> bytes:
    """Send `payload`, half-close, and read everything until the origin closes."""

    async def send() -> None:
        await stream.send_all(payload)
        await stream.send_eof()

    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)


async def read_to_end(stream: trio.SocketStream) -> None:
    """Read and drop until the peer closes (raises if the connection is reset)."""
    while await stream.receive_some(65536):
        pass
