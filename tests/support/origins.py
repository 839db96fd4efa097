"""Local origins for tests: HTTP/1.1 on h11 (plain or TLS), a TCP echo, a WebSocket echo.

Each binds 127.0.0.1 port 0 and is an async context manager yielding an object with the port
and what the origin saw, for use inside a trio test (`async with http_origin() as origin:`).

HTTP routes (any method; HEAD answers the same head without a body)::

    /echo...            JSON: method, target, http_version, headers (raw casing, in order),
                        body_length, body_sha256
    /stream?n=N         N bytes of `pattern_bytes` (Content-Length; &chunked=1 for chunked)
    /truncate?n=N       declares N bytes, sends half, closes the connection
    /gzip               GZIP_BODY with Content-Encoding: gzip
    /redirect           302 to /echo?from=redirect
    /set-cookie         200 with Set-Cookie: fluidity_test=1
    /hang               reads the request, never answers
    /upload             JSON: received (bytes), sha256, framing (chunked/content-length/none)
    /status/CODE        that status (no body for 1xx/204/304)
    /headers?size=N     200 with one X-Big header of N bytes (&count=M: M empty X-E headers)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio
import trio_websocket

HOST = "127.0.0.1"
#: The pattern repeats every 251 bytes (a prime, so it never lines up with chunk sizes).
PERIOD = 251
_PATTERN = bytes(i % PERIOD for i in range(PERIOD * 1024))
_CHUNK = 64 * 1024
GZIP_TEXT = b"Fluidity passes compressed bodies through untouched.\n" * 200
GZIP_BODY = gzip.compress(GZIP_TEXT, mtime=0)


def pattern_chunks(n: int, chunk: int = _CHUNK) -> Iterable[bytes]:
    """The first n bytes of the test pattern, in pieces of at most `chunk` bytes."""
    chunk = min(chunk, len(_PATTERN) - PERIOD)
    offset = 0
    while offset < n:
        size = min(chunk, n - offset)
        start = offset % PERIOD
        yield _PATTERN[start : start + size]
        offset += size


def pattern_bytes(n: int) -> bytes:
    return b"".join(pattern_chunks(n))


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(n):
        digest.update(piece)
    return digest.hexdigest()


# -- HTTP/1.1 origin --------------------------------------------------------------------------


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


@attrs.frozen
class RecordedRequest:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]


@attrs.define
class HTTPOrigin:
    """A running HTTP origin and what it has seen."""

    port: int
    scheme: str
    host: str = HOST
    requests: list[RecordedRequest] = attrs.field(factory=list)
    connections: int = 0
    #: Body bytes the /stream route has handed to the socket so far.
    streamed: int = 0

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"


class _Closed(Exception):
    """The client went away or broke HTTP: stop serving this connection."""


class _HTTPConnection:
    def __init__(self, origin: HTTPOrigin, stream: trio.abc.Stream) -> None:
        self.origin = origin
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Closed from exc

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Closed from exc
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # NEED_DATA is excluded above
            try:
                data = await self.stream.receive_some(_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Closed from exc
            self.conn.receive_data(bytes(data))

    async def read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                digest.update(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return size, digest.hexdigest()
            else:
                raise _Closed

    async def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        head_only: bool = False,
    ) -> None:
        framed = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers)
        if status not in (204, 304) and status >= 200 and not framed:
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        await self.send(h11.Response(status_code=status, headers=headers, reason=_phrase(status)))
        if body and not head_only:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def serve(self) -> None:
        while True:
            event = await self.next_event()
            if not isinstance(event, h11.Request):
                return
            self.origin.requests.append(
                RecordedRequest(event.method, event.target, tuple(event.headers.raw_items()))
            )
            await self.route(event)
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def route(self, request: h11.Request) -> None:
        url = urlsplit(request.target.decode("ascii"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        head_only = request.method == b"HEAD"
        path = url.path
        if path.startswith("/echo"):
            size, sha = await self.read_body()
            body = json.dumps(
                {
                    "method": request.method.decode(),
                    "target": request.target.decode(),
                    "http_version": request.http_version.decode(),
                    "headers": [
                        [n.decode("latin-1"), v.decode("latin-1")]
                        for n, v in request.headers.raw_items()
                    ],
                    "body_length": size,
                    "body_sha256": sha,
                }
            ).encode()
            await self.respond(
                200, [(b"content-type", b"application/json")], body, head_only=head_only
            )
        elif path == "/upload":
            size, sha = await self.read_body()
            framing = "none"
            for name, value in request.headers.raw_items():
                if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    framing = "chunked"
                elif name.lower() == b"content-length":
                    framing = "content-length"
            body = json.dumps({"received": size, "sha256": sha, "framing": framing}).encode()
            await self.respond(200, [(b"content-type", b"application/json")], body)
        elif path == "/stream":
            await self.read_body()
            await self.stream_pattern(int(query.get("n", "0")), query, head_only)
        elif path == "/truncate":
            await self.read_body()
            n = int(query.get("n", "100000"))
            await self.send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % n)]))
            await self.send(h11.Data(data=pattern_bytes(n // 2)))
            await self.stream.aclose()
            raise _Closed
        elif path == "/gzip":
            await self.read_body()
            headers = [(b"content-type", b"text/plain"), (b"content-encoding", b"gzip")]
            await self.respond(200, headers, GZIP_BODY, head_only=head_only)
        elif path == "/redirect":
            await self.read_body()
            await self.respond(302, [(b"location", b"/echo?from=redirect")], b"redirecting\n")
        elif path == "/set-cookie":
            await self.read_body()
            headers = [
                (b"set-cookie", b"fluidity_test=1; Path=/"),
                (b"content-type", b"text/plain"),
            ]
            await self.respond(200, headers, b"cookie set\n", head_only=head_only)
        elif path == "/hang":
            await self.read_body()
            await trio.sleep_forever()
        elif path == "/headers":
            await self.read_body()
            headers = [(b"x-e", b"")] * int(query.get("count", "0"))
            if "size" in query:
                headers.append((b"x-big", b"b" * int(query["size"])))
            await self.respond(200, headers, b"big head\n", head_only=head_only)
        elif path.startswith("/status/"):
            await self.read_body()
            status = int(path.rsplit("/", 1)[1])
            body = b"" if status in (204, 304) or status < 200 else f"status {status}\n".encode()
            await self.respond(status, [], body, head_only=head_only)
        else:
            await self.read_body()
            await self.respond(404, [(b"content-type", b"text/plain")], b"no such route\n")

    async def stream_pattern(self, n: int, query: dict[str, str], head_only: bool) -> None:
        chunked = query.get("chunked") == "1"
        headers = [(b"content-type", b"application/octet-stream")]
        headers.append(
            (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"%d" % n)
        )
        await self.send(h11.Response(status_code=200, headers=headers))
        if not head_only:
            for piece in pattern_chunks(n, int(query.get("chunk", _CHUNK))):
                await self.send(h11.Data(data=piece))
                self.origin.streamed += len(piece)
        await self.send(h11.EndOfMessage())


@asynccontextmanager
async def serve_loopback(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """Serve TCP on 127.0.0.1 (port 0) with `handler` per connection; yields the port."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_origin(*, tls: ssl.SSLContext | None = None) -> AsyncIterator[HTTPOrigin]:
    """An HTTP/1.1 origin on 127.0.0.1 (HTTPS with `tls`, a server-side context)."""
    origin = HTTPOrigin(port=0, scheme="https" if tls else "http")

    async def handle(tcp: trio.SocketStream) -> None:
        origin.connections += 1
        stream: trio.abc.Stream = tcp
        try:
            if tls is not None:
                stream = trio.SSLStream(tcp, tls, server_side=True)
                with trio.fail_after(10):
                    await stream.do_handshake()
            await _HTTPConnection(origin, stream).serve()
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with serve_loopback(handle) as origin.port:
        yield origin


# -- TCP echo origin (for CONNECT) -------------------------------------------------------------


@attrs.define
class TCPOrigin:
    port: int
    host: str = HOST
    #: Connections seen, and how each ended ("eof" or the error).
    connections: int = 0
    endings: list[str] = attrs.field(factory=list)


#: What the TCP echo origin writes after the client's EOF, before closing its side.
ECHO_TRAILER = b"-- end of echo --"


@asynccontextmanager
async def tcp_echo_origin() -> AsyncIterator[TCPOrigin]:
    """Echoes bytes until the client half-closes, then sends ECHO_TRAILER and closes."""
    origin = TCPOrigin(port=0)

    async def handle(tcp: trio.SocketStream) -> None:
        origin.connections += 1
        try:
            while data := await tcp.receive_some(_CHUNK):
                await tcp.send_all(data)
            await tcp.send_all(ECHO_TRAILER)
            await tcp.send_eof()
            origin.endings.append("eof")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            origin.endings.append(f"error: {exc.__cause__ or exc}")
        finally:
            await trio.aclose_forcefully(tcp)

    async with serve_loopback(handle) as origin.port:
        yield origin


# -- WebSocket echo origin -------------------------------------------------------------------


@attrs.define
class WebSocketOrigin:
    """A running WebSocket echo origin and what it has seen.

    Messages: anything is echoed, except the text "headers?" (answered with the handshake's
    request headers as JSON) and "close CODE REASON" (the origin closes with that code).
    Paths: /reject answers the handshake with 403; /big-head accepts it with a 4 KB header.
    """

    port: int
    scheme: str
    host: str = HOST
    subprotocols: tuple[str, ...] = ("chat.v2", "chat.v1")
    #: (code, reason) of every connection once it closed.
    closes: list[tuple[int, str | None]] = attrs.field(factory=list)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    async def wait_closes(self, n: int) -> list[tuple[int, str | None]]:
        """Wait until n connections have closed; returns their (code, reason)."""
        while len(self.closes) < n:
            await self._lot.park()
        return self.closes


@asynccontextmanager
async def websocket_origin(*, tls: ssl.SSLContext | None = None) -> AsyncIterator[WebSocketOrigin]:
    origin = WebSocketOrigin(port=0, scheme="wss" if tls else "ws")

    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        if request.path.startswith("/reject"):
            await request.reject(403, body=b"not welcome\n")
            return
        chosen = next((p for p in request.proposed_subprotocols if p in origin.subprotocols), None)
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers]
        extra = [(b"x-big", b"b" * 4096)] if request.path.startswith("/big-head") else None
        ws = await request.accept(subprotocol=chosen, extra_headers=extra)
        try:
            while True:
                message = await ws.get_message()
                if message == "headers?":
                    await ws.send_message(json.dumps(headers))
                elif isinstance(message, str) and message.startswith("close "):
                    code, _, reason = message[6:].partition(" ")
                    await ws.aclose(int(code), reason)
                    break
                else:
                    await ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            pass
        closed = ws.closed
        origin.closes.append((closed.code, closed.reason) if closed else (0, None))
        origin._lot.unpark_all()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                trio_websocket.serve_websocket,
                handle,
                HOST,
                0,
                tls,
                max_message_size=16 * 1024 * 1024,
            )
        )
        origin.port = server.port
        yield origin
        nursery.cancel_scope.cancel()
