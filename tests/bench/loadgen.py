"""The Python load generator, for when wrk is not installed (`python -m tests.bench.loadgen`).

Keep-alive GETs on `--connections` raw trio sockets, one request in flight per connection,
for `--duration` seconds or `--max-requests` requests, whichever comes first. Parsing is the
minimum: find the end of the head, read Content-Length, read that many bytes. Prints one JSON
object: requests, errors, seconds, requests_per_second, p50_ms, p99_ms, max_ms.

It runs in its own process so it does not share a GIL with whatever it measures; being Python,
it is itself a limit (compare the direct figure before blaming what is behind it).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import time
from typing import Any

import trio

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
RECEIVE_SIZE = 64 * 1024


class Budget:
    """Requests left to start, shared by all connections."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def connection(
    host: str,
    port: int,
    request: bytes,
    budget: Budget,
    latencies: list[float],
    errors: list[str],
) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter
    try:
        await sock.connect((host, port))
        buffer = bytearray()
        while budget.take():
            start = clock()
            await sock.send(request)  # small: always fits the empty send buffer
            end = buffer.find(b"\r\n\r\n")
            while end < 0:
                data = await sock.recv(RECEIVE_SIZE)
                if not data:
                    raise ConnectionError("closed by the peer")
                buffer += data
                end = buffer.find(b"\r\n\r\n")
            if not buffer.startswith(b"HTTP/1.1 200 "):
                raise ConnectionError(f"status {bytes(buffer[:12])!r}")
            match = _CONTENT_LENGTH.search(buffer, 0, end + 2)
            if match is None:
                raise ConnectionError("no Content-Length")
            total = end + 4 + int(match.group(1))
            while len(buffer) < total:
                data = await sock.recv(RECEIVE_SIZE)
                if not data:
                    raise ConnectionError("closed mid-body")
                buffer += data
            del buffer[:total]
            latencies.append(clock() - start)
    except OSError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(
    host: str,
    port: int,
    path: str,
    host_header: str,
    connections: int,
    duration: float,
    max_requests: int,
) -> dict[str, Any]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: bench\r\n\r\n".encode()
    budget = Budget(max_requests)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(connection, host, port, request, budget, latencies, errors)
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "tool": "python",
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "seconds": round(seconds, 3),
        "requests_per_second": round(len(latencies) / seconds, 1) if seconds else None,
        "p50_ms": ms(percentile(ordered, 50)),
        "p99_ms": ms(percentile(ordered, 99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/stream?n=1024", help="request target, as sent")
    parser.add_argument("--host-header", default=None)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    args = parser.parse_args()
    result = trio.run(
        run,
        args.host,
        args.port,
        args.path,
        args.host_header or f"{args.host}:{args.port}",
        args.connections,
        args.duration,
        args.max_requests,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
