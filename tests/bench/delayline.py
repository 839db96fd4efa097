"""A delay line for the WAN bench: a TCP relay that puts a long, narrow path on loopback.

There is no `tc netem` on the bench machine (no kernel modules), so the path is emulated here,
in its own process (`python -m tests.bench.delayline`) so that its CPU is not the measuring
client's. Each `--forward PORT` opens a listener on 127.0.0.1 (port 0) that relays to
127.0.0.1:PORT. Each listener has two directions (client to target, target to client), shared
by all the connections through it, and each direction is:

* a bottleneck of `--rate-mbit`: the bytes read from a sender leave it one after another,
  each chunk `len / rate` after the previous one left (serialization time);
* a queue in front of it of at most `--queue-bytes` (default one bandwidth-delay product):
  when more than that waits to leave, the relay stops reading that sender until the queue is
  half empty, so the sender feels TCP backpressure (nothing is dropped);
* a wire after it of `--rtt-ms / 2`: a chunk reaches the other side that long after it left.

A new connection is forwarded one round trip after the client's connect, and the client's
first bytes are read from then on, as if its SYN and the SYN-ACK had crossed the path: a
fresh connection costs a round trip before its request, as a real one does.

Not emulated: loss, reordering, jitter, slow start. The TCP connections on either side of the
relay run over loopback, so their own acknowledgements and receive windows are not delayed: a
plain TCP transfer through the line behaves like a well-tuned TCP with windows that already
cover the path, which is the right baseline for a multiplexer's windows (those do cross it).
Every chunk (up to 256 KiB, asyncio's read size) is handled whole, so timing is exact to
within a chunk's serialization time (5 ms at 400 Mbit/s).

The chunks of a direction leave in the order they arrived and all wait the same delay, so
their release times never decrease: one deque and one timer per direction, no heap.

The ports go to `--ready-file` as JSON: forwards ({target port: listen port}), listen_port
(the first listener), queue_bytes, pid. It runs on asyncio protocols, as the bench origin
does, because protocol callbacks cost the least CPU per chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque
from enum import Enum

from .ready import write_ready

HOST = "127.0.0.1"
#: The relay's write buffer towards a receiver; above it, the sender is no longer read.
WRITE_HIGH_WATER = 1024 * 1024
#: How long the connect to the target may take before the client is dropped.
CONNECT_TIMEOUT = 10.0


class Marker(Enum):
    """What travels down the wire after a sender's last bytes."""

    EOF = "eof"  # the sender half-closed: half-close the receiver
    CLOSE = "close"  # the sender's connection ended: close the receiver's


class Direction:
    """One way through one listener: the bottleneck, its queue and the wire after it."""

    def __init__(self, rate: float, delay: float, queue: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._rate = rate  # bytes per second
        self._delay = delay  # one way, seconds
        #: The queue's bound, as the time its bytes take to leave.
        self._queue_seconds = queue / rate
        #: When the bottleneck has sent everything given to it so far.
        self._free_at = 0.0
        self._wire: deque[tuple[float, Side, bytes | Marker]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        #: Senders no longer read because the queue is full, and the timer that resumes them.
        self._held: set[Side] = set()
        self._drain_timer: asyncio.TimerHandle | None = None

    def send(self, sender: Side, data: bytes) -> None:
        """Queue `data` from `sender` for the bottleneck; hold the sender if the queue is full."""
        now = self._loop.time()
        self._free_at = max(now, self._free_at) + len(data) / self._rate
        self._push(self._free_at + self._delay, sender, data)
        if self._free_at - now > self._queue_seconds:
            sender.hold("queue")
            self._held.add(sender)
            self._wait_drain()

    def send_marker(self, sender: Side, marker: Marker) -> None:
        """`marker` reaches the receiver after every byte `sender` has sent."""
        self._push(max(self._loop.time(), self._free_at) + self._delay, sender, marker)

    def _push(self, at: float, sender: Side, item: bytes | Marker) -> None:
        self._wire.append((at, sender, item))
        if self._timer is None:
            self._timer = self._loop.call_at(at, self._release)

    def _release(self) -> None:
        """Hand every chunk whose time has come to its receiver; wait for the next one."""
        self._timer = None
        wire = self._wire
        now = self._loop.time()
        # The timer fired for the head, so it goes even if the clock reads a hair early.
        while wire:
            _, sender, item = wire.popleft()
            sender.arrive(item)
            if wire and wire[0][0] > now:
                self._timer = self._loop.call_at(wire[0][0], self._release)
                return

    def _wait_drain(self) -> None:
        if self._drain_timer is None:
            self._drain_timer = self._loop.call_at(
                self._free_at - self._queue_seconds / 2, self._drained
            )

    def _drained(self) -> None:
        self._drain_timer = None
        if self._free_at - self._loop.time() > self._queue_seconds / 2:
            self._wait_drain()  # others filled it up again meanwhile
            return
        held, self._held = self._held, set()
        for sender in held:
            sender.release("queue")


class Side(asyncio.Protocol):
    """One socket of a relayed connection: the client's (accepted) or the target's.

    What it reads goes down `direction` and arrives at `peer`'s socket. It stops reading
    while any hold is on: "connect" (no peer yet), "queue" (the bottleneck's queue is full),
    "peer" (the peer's socket does not take what arrives fast enough).
    """

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.peer: Side | None = None
        self.transport: asyncio.Transport | None = None
        self._holds: set[str] = set()
        self._ended = False  # a CLOSE marker went down the wire
        self._eof_delivered = False  # our half-close reached the peer's socket

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.transport = transport
        if self._holds:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.direction.send(self, data)

    def eof_received(self) -> bool:
        self.direction.send_marker(self, Marker.EOF)
        return True  # keep our side open: the peer may still send

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._ended:
            self._ended = True
            self.direction.send_marker(self, Marker.CLOSE)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.hold("peer")

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.release("peer")

    # -- the relay

    def hold(self, reason: str) -> None:
        if not self._holds and self.transport is not None:
            self.transport.pause_reading()
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        self._holds.discard(reason)
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def arrive(self, item: bytes | Marker) -> None:
        """What this side sent has crossed the path: write it to the peer's socket."""
        receiver = self.peer.transport if self.peer is not None else None
        if receiver is None or receiver.is_closing():
            return
        if item is Marker.EOF:
            self._eof_delivered = True
            if self.peer is not None and self.peer._eof_delivered:
                receiver.close()  # both ways half-closed: done
                self.close()
            elif receiver.can_write_eof():
                receiver.write_eof()
            else:
                receiver.close()
        elif item is Marker.CLOSE:
            receiver.close()  # after what is buffered
        else:
            assert isinstance(item, bytes)
            receiver.write(item)

    def close(self) -> None:
        self._ended = True
        if self.transport is not None:
            self.transport.close()


class Listener:
    """One `--forward`: accepts clients and relays each to the target port across the path."""

    def __init__(self, target_port: int, rtt: float, rate: float, queue: int) -> None:
        self.target_port = target_port
        self.rtt = rtt
        self.up = Direction(rate, rtt / 2, queue)
        self.down = Direction(rate, rtt / 2, queue)
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    def accept(self) -> Side:
        client = Side(self.up)
        client.hold("connect")
        # The handshake's round trip, then the connection to the target.
        self._loop.call_later(self.rtt, self._start_connect, client)
        return client

    def _start_connect(self, client: Side) -> None:
        if client.transport is None:
            return  # the client gave up during the handshake
        task = self._loop.create_task(self._connect(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, client: Side) -> None:
        target = Side(self.down)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._loop.create_connection(lambda: target, HOST, self.target_port)
        except (OSError, TimeoutError):
            client.close()
            return
        if client.transport is None:  # the client left while we connected
            target.close()
            return
        client.peer, target.peer = target, client
        client.release("connect")


async def serve(
    targets: list[int], rtt: float, rate: float, queue: int, ready_file: str | None
) -> None:
    loop = asyncio.get_running_loop()
    forwards: dict[int, int] = {}
    servers: list[asyncio.Server] = []
    for port in targets:
        listener = Listener(port, rtt, rate, queue)
        server = await loop.create_server(listener.accept, HOST, 0, backlog=1024)
        servers.append(server)
        forwards[port] = server.sockets[0].getsockname()[1]
    info = {"forwards": forwards, "listen_port": forwards[targets[0]], "queue_bytes": queue}
    if ready_file:
        write_ready(ready_file, info)
    print(f"delay line: rtt {rtt * 1000:g} ms, {rate * 8 / 1e6:g} Mbit/s, {info}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--forward", type=int, action="append", required=True, metavar="PORT",
        help="relay a new listener to 127.0.0.1:PORT (repeatable)",
    )  # fmt: skip
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added")
    parser.add_argument("--rate-mbit", type=float, required=True, help="bottleneck, each way")
    parser.add_argument(
        "--queue-bytes", type=int, help="bottleneck queue, each way (default: rate x rtt)"
    )
    parser.add_argument("--ready-file", help="write the ports here as JSON once listening")
    args = parser.parse_args(argv)
    rtt = args.rtt_ms / 1000
    rate = args.rate_mbit * 1e6 / 8
    queue = args.queue_bytes or max(64 * 1024, int(rate * rtt))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.forward, rtt, rate, queue, args.ready_file))


if __name__ == "__main__":
    main()
