"""A fast, minimal origin for the bench, run in its own process (`python -m tests.bench.origin`).

Three listeners on 127.0.0.1, port 0 each:

* HTTP/1.1 (keep-alive): any GET answers 200 with `n` bytes (`?n=N` anywhere in the target,
  1024 by default). Heads are preformatted and cached; the body is sliced out of one
  preallocated buffer and written in big pieces as the socket drains, so Python does almost
  nothing per byte. Request bodies are read and discarded (Content-Length only).
* HTTPS: the same over TLS, with the certificate given by `--cert` (a PEM file with the key and
  the chain, as trustme writes it).
* TCP echo: echoes until the client half-closes, then closes (no trailer).

The ports go to `--ready-file` as JSON: listen_port (HTTP), https_port, echo_port, pid.

It runs on asyncio protocols, not trio, on purpose: the origin stands in for the internet but
shares the bench machine's two cores with the load generator, the agent and the server. A
protocol callback answers a small request in one pass (no task switch, no cancel scope), so
the origin takes as little CPU as it can from the processes being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import ssl
from collections.abc import Callable

from .ready import write_ready

HOST = "127.0.0.1"
#: The body buffer; larger bodies repeat it. A period of 251 (a prime) keeps it non-trivial.
_BODY = memoryview(bytes(i % 251 for i in range(251)) * (16 * 1024 * 1024 // 251 + 1))
#: Bytes per write while a large body is sent, and how much may wait in the transport's
#: buffer before the socket must drain (TLS encrypts each write whole, so smaller there).
PLAIN_CHUNK = 1024 * 1024
TLS_CHUNK = 256 * 1024
MAX_HEAD = 64 * 1024
#: Bodies up to this size go out with the head in one write.
SMALL_BODY = 64 * 1024
DEFAULT_SIZE = 1024
SIZE_QUERY = re.compile(rb"[?&]n=(\d+)")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[^\r\n]*close", re.IGNORECASE)

_heads: dict[int, bytes] = {}


def response_head(n: int) -> bytes:
    head = _heads.get(n)
    if head is None:
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % n
        )
        if len(_heads) < 1024:
            _heads[n] = head
    return head


class HttpOrigin(asyncio.Protocol):
    """Keep-alive requests, answered in order; one large body at a time, paced by the socket."""

    def __init__(self, chunk: int) -> None:
        self._chunk = chunk
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        #: Request body bytes still to discard.
        self._discard = 0
        #: Response body bytes still to send, and whether to close after them.
        self._pending = 0
        self._close_after = False
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=self._chunk)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._pending:
            self._serve()
        if len(self._buffer) > MAX_HEAD:  # no head is that long; nothing pipelines that much
            self._close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._send_body()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _serve(self) -> None:
        """Answer every complete request in the buffer, until a large body has to wait."""
        buffer = self._buffer
        while self._transport is not None and not self._pending:
            if self._discard:
                taken = min(self._discard, len(buffer))
                del buffer[:taken]
                self._discard -= taken
                if self._discard:
                    return
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            line_end = head.find(b"\r\n")
            match = SIZE_QUERY.search(head if line_end < 0 else head[:line_end])
            n = int(match.group(1)) if match else DEFAULT_SIZE
            length = _CONTENT_LENGTH.search(head)
            if length:
                self._discard = int(length.group(1))
            self._close_after = _CLOSE.search(head) is not None
            if n <= SMALL_BODY:
                self._transport.write(response_head(n) + _BODY[:n])
                if self._close_after:
                    self._close()
            else:
                self._transport.write(response_head(n))
                self._pending = n
                self._send_body()

    def _send_body(self) -> None:
        size = len(_BODY)
        while self._pending and not self._paused and self._transport is not None:
            piece = min(self._chunk, self._pending, size)
            self._pending -= piece
            self._transport.write(_BODY[:piece])
        if not self._pending and not self._paused:
            if self._close_after:
                self._close()
            else:
                self._serve()


class Echo(asyncio.Protocol):
    """Echo until the client half-closes, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._transport.write(data)

    def pause_writing(self) -> None:
        self._transport.pause_reading()  # the client is not reading: stop reading it

    def resume_writing(self) -> None:
        self._transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once what was echoed is written


async def main(cert: str | None, ready_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    ports: dict[str, int] = {}
    servers: list[asyncio.Server] = []

    async def listen(
        name: str, factory: Callable[[], asyncio.Protocol], tls: ssl.SSLContext | None = None
    ) -> None:
        server = await loop.create_server(
            factory,
            HOST,
            0,
            ssl=tls,
            ssl_handshake_timeout=10 if tls else None,
            backlog=2048,
        )
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]

    await listen("listen_port", lambda: HttpOrigin(PLAIN_CHUNK))
    await listen("echo_port", Echo)
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert)
        await listen("https_port", lambda: HttpOrigin(TLS_CHUNK), context)
    if ready_file:
        write_ready(ready_file, ports)
    print(f"bench origin listening: {ports}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", help="PEM with the key and the certificate chain (for HTTPS)")
    parser.add_argument("--ready-file", help="write the ports here as JSON once listening")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.cert, args.ready_file))
