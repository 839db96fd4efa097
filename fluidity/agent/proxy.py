"""The agent's local HTTP/1.1 proxy: h11 on the client side, tunnel streams on the other.

One `ClientConnection` per accepted socket serves keep-alive requests in turn:
absolute-form requests become Request streams, CONNECT becomes a Connect stream relaying raw
bytes, and WebSocket upgrades are terminated here with wsproto and relayed message by message.
Origin-form requests are for the agent itself (/healthz).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

import attrs
import h11
import trio

from fluidity.protocol import (
    Connect,
    ConnectAck,
    ErrorCode,
    Request,
    Response,
    WebSocketAck,
    WebSocketOpen,
)
from fluidity.tunnel import (
    Link,
    LinkClosed,
    StreamLimit,
    StreamReset,
    TunnelError,
    TunnelStream,
)

from . import headers as hdr
from .headers import BadRequest
from .tunnel_client import TunnelClient, TunnelUnavailable
from .websocket import relay_websocket, websocket_accept_headers

log = logging.getLogger(__name__)

Ack = TypeVar("Ack", ConnectAck, WebSocketAck)

READ_SIZE = 64 * 1024
MAX_HEAD_SIZE = 64 * 1024


@attrs.frozen
class ProxySettings:
    #: "user:password" for Basic proxy authentication, or None for none.
    proxy_auth: str | None = None
    #: How long a request waits for the tunnel to be up before it gets a 502.
    request_wait_timeout: float = 30.0
    #: How long a client may take to send a request head.
    head_timeout: float = 30.0
    #: How long an idle keep-alive client connection is kept.
    idle_timeout: float = 120.0
    #: How long a client may pause while sending a request body.
    body_timeout: float = 120.0


class _ClientGone(Exception):
    """The local client closed its connection or broke HTTP mid-request."""


class Proxy:
    """Serves local client connections; shared by all of them."""

    def __init__(
        self,
        tunnel: TunnelClient,
        settings: ProxySettings,
        health: Callable[[], tuple[int, dict[str, Any]]],
    ) -> None:
        self.tunnel = tunnel
        self.settings = settings
        self.health = health
        self.connections: set[ClientConnection] = set()
        self.active_requests = 0
        self.shutting_down = False
        self._idle = trio.Event()
        self._auth = _expected_auth(settings.proxy_auth)

    async def handle(self, client: trio.abc.HalfCloseableStream) -> None:
        """Entry point for trio.serve_listeners."""
        connection = ClientConnection(self, client)
        self.connections.add(connection)
        try:
            await connection.serve()
        except Exception:
            # A bug must cost one client connection, never the agent.
            log.exception("error serving a client connection")
        finally:
            self.connections.discard(connection)
            if isinstance(client, trio.SocketStream):
                client.socket.close()  # what aclose() does, without a checkpoint to survive
            else:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(client)

    def begin_shutdown(self) -> None:
        """Stop taking new requests: idle connections close now, busy ones after this one."""
        self.shutting_down = True
        for connection in list(self.connections):
            connection.idle_scope.cancel()

    async def wait_requests_done(self) -> None:
        while self.active_requests:
            self._idle = trio.Event()
            await self._idle.wait()

    def _request_started(self) -> None:
        self.active_requests += 1

    def _request_ended(self) -> None:
        self.active_requests -= 1
        if not self.active_requests:
            self._idle.set()

    async def link(self) -> Link:
        """The tunnel link, waiting (bounded) while it is down."""
        link = self.tunnel.link
        if link is not None and link.is_open and not link.draining:
            return link  # the usual case: no timeout scope needed
        with trio.move_on_after(self.settings.request_wait_timeout):
            return await self.tunnel.wait_link()
        reason = self.tunnel.last_error or "still connecting"
        raise TunnelUnavailable(
            f"tunnel to the server is unavailable after {self.settings.request_wait_timeout:g} s "
            f"({reason})"
        )


def _expected_auth(proxy_auth: str | None) -> bytes | None:
    """The Basic credentials token a client must present, or None when auth is off."""
    if proxy_auth is None:
        return None
    return base64.b64encode(proxy_auth.encode())


class ClientConnection:
    """One local client connection, served request by request."""

    def __init__(self, proxy: Proxy, client: trio.abc.HalfCloseableStream) -> None:
        self.proxy = proxy
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        self.idle_scope = trio.CancelScope()
        self._send_lock = trio.Lock()

    # -- h11 plumbing ---------------------------------------------------------------------

    async def _receive_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.client.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone("client connection lost") from exc
            self.h11.receive_data(bytes(data))

    def _encode(self, event: h11.Event) -> bytes:
        data = self.h11.send(event)
        assert data is not None  # only ConnectionClosed encodes to None
        return data

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self._send_raw(data)

    async def _send_raw(self, data: bytes) -> None:
        # The lock only matters while a request body is pumped (100 Continue) or a WebSocket
        # relays; uncontended, take it without the scheduling round trip of `async with`.
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self.client.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGone("client connection lost") from exc
        finally:
            lock.release()

    async def _send_simple(
        self,
        status: int,
        text: str,
        *,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        """A complete small response, if a response can still be sent."""
        if self.h11.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            raise _ClientGone("response already started; aborting the connection")
        body = text.encode() if text.endswith("\n") else (text + "\n").encode()
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"via", hdr.VIA),
            *(extra or []),
        ]
        if status >= 500 or self.proxy.shutting_down:
            headers.append((b"connection", b"close"))
        await self._send(h11.Response(status_code=status, headers=headers, reason=_phrase(status)))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    # -- the request loop -----------------------------------------------------------------

    async def serve(self) -> None:
        settings = self.proxy.settings
        try:
            while not self.proxy.shutting_down:
                request = await self._next_request(settings)
                if request is None:
                    return
                self.proxy._request_started()
                try:
                    keep_alive = await self._handle(request)
                finally:
                    self.proxy._request_ended()
                if not keep_alive or self.h11.our_state is not h11.DONE:
                    return
                if self.h11.their_state is h11.SEND_BODY:
                    # A bodiless request still has its EndOfMessage waiting in h11's buffer.
                    self.h11.next_event()
                if self.h11.their_state is not h11.DONE:
                    return  # the client did not finish its body; don't guess where it ends
                self.h11.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if self.h11.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                log.info("malformed request from client: %s", exc)
                with contextlib.suppress(_ClientGone, h11.LocalProtocolError):
                    await self._send_simple(exc.error_status_hint, f"Bad request: {exc}")
        except _ClientGone as exc:
            log.debug("client connection ended: %s", exc)

    async def _next_request(self, settings: ProxySettings) -> h11.Request | None:
        """Wait for the next request head; None when the client is done or went idle.

        One cancel scope serves both waits: the idle timeout until the first byte, then the
        head timeout; `begin_shutdown` cancels it to close idle connections.
        """
        if self.proxy.shutting_down:
            return None
        scope = self.idle_scope = trio.CancelScope(
            deadline=trio.current_time() + settings.idle_timeout
        )
        with scope:
            if self._need_data():
                try:
                    first = await self.client.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not first:
                    return None
                self.h11.receive_data(bytes(first))
            scope.deadline = trio.current_time() + settings.head_timeout
            event = await self._receive_event()
            return event if isinstance(event, h11.Request) else None
        if self.proxy.shutting_down or not self.h11.trailing_data[0]:
            return None
        raise h11.RemoteProtocolError("request head not received in time", 408)

    def _need_data(self) -> bool:
        return self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]

    async def _handle(self, request: h11.Request) -> bool:
        """Serve one request; True if the connection may be kept alive."""
        headers = list(request.headers)  # once: h11's Headers iterate slowly, by index
        expected = self.proxy._auth
        if expected is not None:
            supplied = hdr.get(headers, b"proxy-authorization")
            if not _auth_ok(supplied, expected):
                await self._send_simple(
                    407,
                    "Proxy authentication required",
                    extra=[(b"proxy-authenticate", b'Basic realm="fluidity"')],
                )
                return True
        try:
            if request.method == b"CONNECT":
                await self._connect(request)
                return False
            if request.target.startswith(b"/"):
                await self._local(request)
                return True
            hdr.check_framing(headers)
            if hdr.is_websocket_upgrade(headers):
                await self._websocket(request, headers)
                return False
            await self._forward(request, headers)
            return True
        except BadRequest as exc:
            await self._send_simple(400, f"Bad request: {exc}")
            return False
        except TunnelUnavailable as exc:
            await self._send_simple(502, str(exc))
            return False
        except StreamLimit as exc:
            # The tunnel works but carries as many streams as the server allows: busy, not
            # broken; the client may try again shortly.
            await self._send_simple(
                503, f"the tunnel is busy: {exc}", extra=[(b"retry-after", b"1")]
            )
            return False

    # -- the agent's own endpoints --------------------------------------------------------

    async def _local(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        if path == b"/healthz" and request.method in {b"GET", b"HEAD"}:
            status, body = self.proxy.health()
            await self._send_simple(
                status, json.dumps(body, indent=2), content_type=b"application/json"
            )
            return
        await self._send_simple(
            400,
            "This is Fluidity's HTTP proxy, not a web server. Configure it as your HTTP and "
            "HTTPS proxy (for example `curl -x http://127.0.0.1:8080 https://example.com`); "
            "GET /healthz shows the tunnel's state.",
        )

    # -- plain HTTP -----------------------------------------------------------------------

    async def _open(self, head: Request | Connect | WebSocketOpen) -> TunnelStream:
        link = await self.proxy.link()
        try:
            return await link.open_stream(head)
        except LinkClosed as exc:
            raise TunnelUnavailable(f"tunnel to the server is unavailable ({exc})") from exc

    async def _forward(self, request: h11.Request, headers: hdr.HeaderList) -> None:
        target = hdr.parse_target(request.target)
        body = hdr.has_body(headers)
        head = Request(
            0,
            request.method,
            target.url,
            tuple(hdr.request_headers(headers, target)),
            end_stream=not body,
        )
        stream = await self._open(head)
        log.debug("%s %s://%s", request.method.decode(), target.scheme, target.authority.decode())
        async with stream:
            try:
                if body:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump_body, stream)
                        await self._relay_response(stream)
                        nursery.cancel_scope.cancel()
                else:
                    await self._relay_response(stream)
            except* (LinkClosed, StreamReset) as group:
                await self._tunnel_failed(group.exceptions[0])

    async def _relay_response(self, stream: TunnelStream) -> None:
        """The response, tunnel -> client: the head and whatever body bytes came with it go
        out in one write, later bytes as they arrive."""
        reply = await stream.wait_reply()
        assert isinstance(reply, Response)
        pending = [
            self._encode(
                h11.Response(
                    status_code=reply.status,
                    reason=reply.reason,
                    headers=hdr.response_headers(reply.headers),
                )
            )
        ]
        size = 0
        while True:
            data = stream.receive_nowait()
            if data is None:
                if pending:
                    await self._send_raw(b"".join(pending))
                    pending.clear()
                    size = 0
                data = await stream.receive_some()
            if not data:
                break
            pending.append(self._encode(h11.Data(data=data)))
            size += len(data)
            if size >= READ_SIZE:
                await self._send_raw(b"".join(pending))
                pending.clear()
                size = 0
        pending.append(self._encode(h11.EndOfMessage()))
        await self._send_raw(b"".join(pending))

    async def _pump_body(self, stream: TunnelStream) -> None:
        """Request body: client -> tunnel, answering Expect: 100-continue first."""
        if self.h11.they_are_waiting_for_100_continue:
            await self._send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
        with trio.fail_after(self.proxy.settings.body_timeout) as scope:
            while True:
                event = await self._receive_event()
                scope.deadline = trio.current_time() + self.proxy.settings.body_timeout
                if isinstance(event, h11.Data):
                    await stream.send_all(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    await stream.send_eof()
                    return
                else:
                    raise _ClientGone("client closed the connection during the request body")

    async def _tunnel_failed(self, exc: BaseException) -> None:
        """A stream broke: 502 if nothing was answered yet, else drop the client connection."""
        if isinstance(exc, StreamReset) and exc.code == ErrorCode.UPSTREAM_ERROR:
            reason = f"the origin failed: {exc.message}"
        else:
            reason = f"the tunnel failed: {exc}"
        log.warning("request failed: %s", reason)
        await self._send_simple(502, reason)

    async def _accepted(self, stream: TunnelStream, kind: type[Ack]) -> Ack | None:
        """The server's acceptance of a CONNECT or WebSocket stream; None once the client
        has been told why not (the origin's status, or 502 for a failed tunnel)."""
        try:
            ack = await stream.wait_reply()
        except (LinkClosed, StreamReset) as exc:
            await self._tunnel_failed(exc)
            return None
        assert isinstance(ack, kind)
        if ack.success:
            return ack
        status = ack.status if 400 <= ack.status < 600 else 502
        await self._send_simple(status, ack.error or f"the server refused ({ack.status})")
        return None

    # -- CONNECT ----------------------------------------------------------------------------

    async def _connect(self, request: h11.Request) -> None:
        host, port = hdr.parse_authority(request.target)
        stream = await self._open(Connect(0, host, port))
        log.debug("CONNECT %s:%d", host, port)
        async with stream:
            ack = await self._accepted(stream, ConnectAck)
            if ack is None:
                return
            await self._send(
                h11.Response(status_code=200, headers=[], reason=b"Connection Established")
            )
            trailing, _ = self.h11.trailing_data
            try:
                if trailing:
                    await stream.send_all(trailing)
                await self._relay_bytes(stream)
            except* (LinkClosed, StreamReset) as group:  # the relay's nursery wraps them
                log.info("tunnel to %s:%d ended: %s", host, port, group.exceptions[0])

    async def _relay_bytes(self, stream: TunnelStream) -> None:
        client = self.client

        client_done = False

        async def client_to_tunnel() -> None:
            nonlocal client_done
            while True:
                try:
                    data = await client.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    stream.reset(ErrorCode.CANCEL, "client connection lost")
                    raise
                if not data:
                    client_done = True
                    await stream.send_eof()
                    return
                await stream.send_all(data)

        async def tunnel_to_client() -> None:
            while data := await stream.receive_some():
                await client.send_all(data)
            if not client_done:  # else the close that follows says it all
                await client.send_eof()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_to_tunnel)
                await tunnel_to_client()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- WebSocket ----------------------------------------------------------------------------

    async def _websocket(self, request: h11.Request, headers: hdr.HeaderList) -> None:
        target = hdr.parse_target(request.target, websocket=True)
        keys = hdr.get(headers, b"sec-websocket-key")
        if len(keys) != 1 or hdr.get(headers, b"sec-websocket-version") != [b"13"]:
            raise BadRequest("a WebSocket upgrade needs one Sec-WebSocket-Key and version 13")
        head = WebSocketOpen(
            0,
            target.url.decode("ascii"),
            tuple(hdr.websocket_headers(headers, target)),
            hdr.subprotocols(headers),
        )
        stream = await self._open(head)
        log.debug("WebSocket %s://%s", target.scheme, target.authority.decode())
        async with stream:
            ws_ack = await self._accepted(stream, WebSocketAck)
            if ws_ack is None:
                return
            subprotocol = ws_ack.subprotocol
            await self._send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=websocket_accept_headers(keys[0], subprotocol),
                    reason=b"Switching Protocols",
                )
            )
            trailing, _ = self.h11.trailing_data
            try:
                await relay_websocket(self.client, stream, trailing, self._send_lock)
            except* (TunnelError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
                log.info("WebSocket relay ended: %s", group.exceptions[0])


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _auth_ok(supplied: list[bytes], expected: bytes) -> bool:
    if len(supplied) != 1:
        return False
    scheme, _, token = supplied[0].strip().partition(b" ")
    return scheme.lower() == b"basic" and hmac.compare_digest(token.strip(), expected)
