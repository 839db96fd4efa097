"""A fast, minimal origin for the bench, run in its own process (`python -m tests.bench.origin`).

Three listeners on 127.0.0.1, port 0 each:

* HTTP/1.1 (keep-alive): any GET answers 200 with `n` bytes (`?n=N` anywhere in the target,
  1024 by default). Heads are preformatted and cached; the body is sliced out of one
  preallocated buffer and handed to `send_all` in big pieces, so Python does almost nothing
  per byte. Request bodies are read and discarded (Content-Length only).
* HTTPS: the same over `trio.SSLStream`, with the certificate given by `--cert` (a PEM file with
  the key and the chain, as trustme writes it).
* TCP echo: echoes until the client half-closes, then closes (no trailer).

The ports go to `--ready-file` as JSON: listen_port (HTTP), https_port, echo_port, pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import ssl
from functools import partial

import trio

HOST = "127.0.0.1"
#: The body buffer; larger bodies repeat it. A period of 251 (a prime) keeps it non-trivial.
_BODY = memoryview(bytes(i % 251 for i in range(251)) * (16 * 1024 * 1024 // 251 + 1))
#: Bytes per send_all on plain TCP (the kernel takes what fits) and per TLS write (encrypted
#: in one go into trio's buffer before it is sent, so kept moderate).
PLAIN_CHUNK = 4 * 1024 * 1024
TLS_CHUNK = 256 * 1024
RECEIVE_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
DEFAULT_SIZE = 1024
_SIZE = re.compile(rb"[?&]n=(\d+)")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[^\r\n]*close", re.IGNORECASE)
_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError)

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


async def send_body(stream: trio.abc.Stream, n: int, chunk: int) -> None:
    sent = 0
    size = len(_BODY)
    while sent < n:
        piece = min(chunk, n - sent, size)
        await stream.send_all(_BODY[:piece])
        sent += piece


async def serve_http(stream: trio.abc.Stream, chunk: int) -> None:
    """Serve keep-alive requests until the client closes or asks to."""
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(buffer) > MAX_HEAD:
                return
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            buffer += data
            end = buffer.find(b"\r\n\r\n", max(0, len(buffer) - len(data) - 3))
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        match = _SIZE.search(request_line)
        n = int(match.group(1)) if match else DEFAULT_SIZE
        length = _CONTENT_LENGTH.search(head)
        if length:  # discard a request body
            remaining = int(length.group(1))
            while remaining > len(buffer):
                remaining -= len(buffer)
                buffer.clear()
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                buffer += data
            del buffer[:remaining]
        if n <= 64 * 1024:
            await stream.send_all(response_head(n) + _BODY[:n])
        else:
            await stream.send_all(response_head(n))
            await send_body(stream, n, chunk)
        if _CLOSE.search(head):
            return


async def handle_http(tcp: trio.SocketStream) -> None:
    try:
        await serve_http(tcp, PLAIN_CHUNK)
    except _ERRORS:
        pass
    finally:
        await trio.aclose_forcefully(tcp)


async def handle_https(context: ssl.SSLContext, tcp: trio.SocketStream) -> None:
    tls = trio.SSLStream(tcp, context, server_side=True)
    try:
        with trio.fail_after(10):
            await tls.do_handshake()
        await serve_http(tls, TLS_CHUNK)
    except _ERRORS:
        pass
    finally:
        await trio.aclose_forcefully(tls)


async def handle_echo(tcp: trio.SocketStream) -> None:
    try:
        while data := await tcp.receive_some(RECEIVE_SIZE):
            await tcp.send_all(data)
    except _ERRORS:
        pass
    finally:
        await trio.aclose_forcefully(tcp)


def _write_ready(path: str, info: dict[str, int]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)


async def main(cert: str | None, ready_file: str | None) -> None:
    async with trio.open_nursery() as nursery:
        ports: dict[str, int] = {}

        async def listen(name: str, handler: object) -> None:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
            ports[name] = listeners[0].socket.getsockname()[1]

        await listen("listen_port", handle_http)
        await listen("echo_port", handle_echo)
        if cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert)
            await listen("https_port", partial(handle_https, context))
        if ready_file:
            _write_ready(ready_file, ports)
        print(f"bench origin listening: {ports}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", help="PEM with the key and the certificate chain (for HTTPS)")
    parser.add_argument("--ready-file", help="write the ports here as JSON once listening")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, args.cert, args.ready_file)
