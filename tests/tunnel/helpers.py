"""Helpers for the multiplexer tests: linked agent/server pairs, payloads, mistreatable wires."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from fluidity.protocol import FrameDecoder, Message, Role
from fluidity.tunnel import Link, LinkConfig, TunnelStream, open_link

Handler = Callable[[TunnelStream], Awaitable[None]]
#: (length, sha256 hex) of a byte sequence: compares bodies without keeping them around.
Digest = tuple[int, str]


@asynccontextmanager
async def linked_pair(
    handler: Handler,
    agent_config: LinkConfig | None = None,
    server_config: LinkConfig | None = None,
    transports: tuple[trio.abc.Stream, trio.abc.Stream] | None = None,
) -> AsyncIterator[tuple[Link, Link]]:
    """An agent link and a server link (running `handler` per stream) joined in memory.

    `transports` is (agent side, server side); by default a `memory_stream_pair()`.
    """
    agent_side, server_side = transports or trio.testing.memory_stream_pair()
    servers: list[Link] = []
    server_up = trio.Event()

    async def serve() -> None:
        async with open_link(server_side, Role.SERVER, server_config, handler) as server:
            servers.append(server)
            server_up.set()
            await server.wait_closed()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with open_link(agent_side, Role.AGENT, agent_config) as agent:
            await server_up.wait()
            yield agent, servers[0]
        nursery.cancel_scope.cancel()


def payload(seed: int, size: int) -> bytes:
    """`size` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def digest(data: bytes) -> Digest:
    return len(data), hashlib.sha256(data).hexdigest()


async def receive_all(stream: TunnelStream, max_bytes: int | None = None) -> Digest:
    """Read `stream` to its end (b"") and return the digest of everything received."""
    hasher = hashlib.sha256()
    total = 0
    while data := await stream.receive_some(max_bytes):
        hasher.update(data)
        total += len(data)
    return total, hasher.hexdigest()


async def send_chunked(
    stream: TunnelStream, data: bytes, rng: random.Random, *, max_chunk: int = 100_000
) -> None:
    """Send `data` in random-sized pieces, then end the stream."""
    view = memoryview(data)
    while view:
        n = rng.randint(1, max_chunk)
        await stream.send_all(view[:n])
        view = view[n:]
    await stream.send_eof()


def decode_frames(data: bytes | bytearray) -> list[Message]:
    """Every complete frame in `data`, decoded."""
    decoder = FrameDecoder(16 * 1024 * 1024)
    decoder.receive_data(data)
    frames = []
    while (message := decoder.next_message()) is not None:
        frames.append(message)
    return frames


class Wire(trio.abc.Stream):
    """A transport wrapper a test can throttle, hold, blackhole and tap.

    * `rate`: bytes per (virtual) second that send_all lets through; None is unlimited.
    * `hold()` / `release()`: send_all waits while held (the writer is stuck mid-batch).
    * `blackholed`: both directions silently drop everything (a dead peer, no FIN/RST).
    * `sent`: every byte passed to send_all, kept when `record` is true.
    * `probes`: callables run at every send_all, to check invariants while data moves.
    """

    def __init__(
        self, inner: trio.abc.Stream, *, rate: float | None = None, record: bool = False
    ) -> None:
        self.inner = inner
        self.rate = rate
        self.blackholed = False
        self.sent: bytearray | None = bytearray() if record else None
        self.probes: list[Callable[[], None]] = []
        self._flowing = trio.Event()
        self._flowing.set()

    def hold(self) -> None:
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def release(self) -> None:
        self._flowing.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        for probe in self.probes:
            probe()
        await self._flowing.wait()
        if self.sent is not None:
            self.sent += data
        if self.rate is not None:
            await trio.sleep(len(data) / self.rate)
        if self.blackholed:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while True:
            data = await self.inner.receive_some(max_bytes)
            if data and self.blackholed:
                continue
            return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Delayed(trio.abc.Stream):
    """One end of a delay line: what is sent reaches the peer `delay` (virtual) seconds later."""

    def __init__(self, inner: trio.abc.Stream, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self._send, self._pending = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def forward(self) -> None:
        async with self._pending:
            async for release, data in self._pending:
                await trio.sleep_until(release)
                await self.inner.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._send.send_nowait((trio.current_time() + self.delay, bytes(data)))
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._send.close()
        await self.inner.aclose()


@asynccontextmanager
async def delay_line(one_way: float) -> AsyncIterator[tuple[trio.abc.Stream, trio.abc.Stream]]:
    """(agent side, server side) joined in memory with `one_way` seconds each way.

    A path of unlimited bandwidth and a fixed round trip: on the virtual clock, whatever
    limits a transfer across it is the protocol's windows.
    """
    a, b = trio.testing.memory_stream_pair()
    ends = _Delayed(a, one_way), _Delayed(b, one_way)
    async with trio.open_nursery() as nursery:
        for end in ends:
            nursery.start_soon(end.forward)
        yield ends
        nursery.cancel_scope.cancel()
