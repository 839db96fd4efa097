"""The agent's local HTTP/1.1 proxy: h11 on the client side, tunnel streams on the other.

One `ClientConnection` per accepted socket serves keep-alive requests in turn:
absolute-form requests become Request streams, CONNECT becomes a Connect stream relaying raw
bytes, and WebSocket upgrades are terminated here with wsproto and relayed message by message.
Origin-form requests are for the agent itself: /healthz, / (the status page, `status`),
/metrics and /proxy.pac. The routing rules (`routing`) send each destination through the
tunnel, to the direct link (`direct`), or nowhere (403). The SOCKS5 listener (`socks`) shares
this module's connection accounting, stream opening and byte relay. As each request or tunnel
ends, `metrics` counts it (and logs it when the access log is on).

What a client sends is never echoed: a malformed request is logged and answered with the kind
of error and a length, never its bytes (they may hold credentials or private URLs). A transfer
the tunnel cut short ends with a TCP reset, so the client cannot take it for a complete one.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import socket
import struct
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol, TypeVar

import attrs
import h11
import trio

from fluidity.httputil import ERROR_HEADER, REASON_HEADER, header_text, upstream_reason
from fluidity.protocol import (
    DEFAULT_MAX_DATA_SIZE,
    FRAME_ENVELOPE,
    Connect,
    ConnectAck,
    ErrorCode,
    Request,
    Response,
    WebSocketAck,
    WebSocketOpen,
    encode_bytes,
)
from fluidity.startup import host_port
from fluidity.tunnel import (
    FrameTooLarge,
    Link,
    LinkClosed,
    StreamLimit,
    StreamReset,
    TunnelError,
    TunnelStream,
)

from . import headers as hdr
from . import pac
from .burst import BurstLog
from .direct import DirectLink
from .headers import BadRequest
from .metrics import AgentMetrics
from .routing import Action, Routes
from .settings import is_loopback
from .status import page as status_page
from .tunnel_client import TunnelClient, TunnelUnavailable
from .websocket import relay_websocket, websocket_accept_headers

log = logging.getLogger(__name__)

Ack = TypeVar("Ack", ConnectAck, WebSocketAck)
Opening = Request | Connect | WebSocketOpen

READ_SIZE = 64 * 1024
#: The largest request head read: the largest frame the server takes by default. The head is
#: read before the link may be up to say otherwise, and a longer one could never be sent on.
MAX_HEAD_SIZE = DEFAULT_MAX_DATA_SIZE + FRAME_ENVELOPE
#: 407s on one connection before it is closed (a browser asks once, then prompts the user).
MAX_AUTH_ATTEMPTS = 3
#: After an error answer, how long and how much of the rest of a request is read and dropped
#: before closing, so that closing with unread bytes (a TCP reset) does not destroy the answer.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 1024 * 1024
#: How long a connection over max_client_connections may take to send the head it gets 503 for.
REFUSE_TIMEOUT = 5.0
#: SO_LINGER on, timeout 0: close() sends a TCP reset instead of a FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@attrs.frozen
class ProxySettings:
    #: "user:password" for Basic proxy authentication, or None for none.
    proxy_auth: str | None = None
    #: How long a request waits for the tunnel to be up before it gets a 502.
    request_wait_timeout: float = 30.0
    #: How long a client may take to send a request head.
    head_timeout: float = 30.0
    #: How long an idle keep-alive client connection is kept (client_idle_timeout).
    idle_timeout: float = 60.0
    #: How long a client may pause while sending a request body.
    body_timeout: float = 120.0
    #: How long a CONNECT tunnel may carry no bytes either way.
    tunnel_idle_timeout: float = 300.0
    #: How long a CONNECT tunnel may carry no bytes once one side has ended its half.
    half_closed_timeout: float = 60.0
    #: Most client connections at once (max_client_connections, or less if fds are short).
    max_connections: int = 512
    #: Host names /healthz, /metrics and /proxy.pac answer to besides loopback ones (lower
    #: case, no port).
    healthz_hosts: frozenset[str] = frozenset()
    #: Where each destination goes (routes, default_route).
    routes: Routes = attrs.field(factory=Routes)


class Blocked(Exception):
    """The routing rules refuse the destination; the message names the rule (safe to show)."""


class _ClientGone(Exception):
    """The local client closed its connection or broke HTTP mid-request."""


class _Refused(Exception):
    """The request cannot be forwarded; the client gets `status` with `reason` and a close."""

    def __init__(self, status: int, reason: str, token: bytes = b"head-too-large") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: Its X-Fluidity-Reason.
        self.token = token


#: What h11's complaints are about, by how their message starts. The rest of a message may
#: quote the client's bytes, which must reach neither a log nor a response.
_H11_ERRORS = (
    ("illegal request line", "malformed request line"),
    ("no request line", "malformed request line"),
    ("illegal method", "malformed request line"),
    ("illegal target", "malformed request line"),
    ("illegal header line", "malformed header line"),
    ("continuation line", "malformed header line"),
    ("illegal header name", "invalid header name"),
    ("illegal header value", "invalid header value"),
    ("missing mandatory host", "missing Host header"),
    ("found multiple host", "more than one Host header"),
    ("conflicting content-length", "conflicting Content-Length headers"),
    ("bad content-length", "invalid Content-Length"),
    ("multiple transfer-encoding", "more than one Transfer-Encoding header"),
    ("only transfer-encoding: chunked", "unsupported Transfer-Encoding (only chunked is)"),
    ("illegal chunk header", "malformed chunked body"),
    ("malformed chunk footer", "malformed chunked body"),
    ("peer closed connection without sending complete", "request body cut short"),
    ("peer unexpectedly closed", "request cut short"),
    ("request head not received in time", "request head not received in time"),
)


def describe_h11_error(exc: h11.ProtocolError) -> str:
    """The kind of a malformed request, in words safe to log and show (no client bytes)."""
    message = str(exc).lower()
    for start, kind in _H11_ERRORS:
        if message.startswith(start):
            return kind
    return "malformed request"


class Served(Protocol):
    """A client connection the proxy counts against max_client_connections (HTTP or SOCKS)."""

    client: trio.abc.HalfCloseableStream
    #: Cancelled to close the connection while it waits for its next request.
    idle_scope: trio.CancelScope
    #: Close with a TCP reset: a transfer was cut short.
    abort: bool
    #: Why the connection is only refused (over max_client_connections), or None.
    refusal: str | None

    async def serve(self) -> None: ...


class Proxy:
    """Serves local client connections; shared by all of them."""

    def __init__(
        self,
        tunnel: TunnelClient,
        settings: ProxySettings,
        health: Callable[[], tuple[int, dict[str, Any]]],
        direct: DirectLink | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.tunnel = tunnel
        self.settings = settings
        self.health = health
        #: The link for direct routes (None: no rule sends traffic direct).
        self.direct = direct
        self.metrics = metrics if metrics is not None else tunnel.metrics
        self.connections: set[Served] = set()
        #: Connections waiting for their next request, oldest first (a dict keeps order).
        self.idle_connections: dict[Served, None] = {}
        self.active_requests = 0
        self.shutting_down = False
        self._idle = trio.Event()
        self._auth = _expected_auth(settings.proxy_auth)
        self.auth_failures = BurstLog(log, logging.WARNING)
        self.over_capacity = BurstLog(log, logging.WARNING)

    async def handle(self, client: trio.abc.HalfCloseableStream) -> None:
        """Entry point for the HTTP listener."""
        await self.serve_connection(ClientConnection(self, client))

    async def serve_connection(self, connection: Served) -> None:
        """Serve one accepted connection within max_client_connections, then close it (with
        a reset if its transfer was cut short)."""
        client = connection.client
        if len(self.connections) >= self.settings.max_connections and not self.close_oldest_idle():
            connection.refusal = (
                f"the agent already serves {len(self.connections)} client connections "
                "(max_client_connections) and none is idle; retry shortly, close idle "
                "clients, or raise max_client_connections"
            )
            self.over_capacity.record(
                "client connections at max_client_connections (%d), none idle: refusing new ones",
                self.settings.max_connections,
            )
        self.connections.add(connection)
        try:
            await connection.serve()
        except Exception:
            # A bug must cost one client connection, never the agent.
            log.exception("error serving a client connection")
        finally:
            self.connections.discard(connection)
            self.idle_connections.pop(connection, None)
            if isinstance(client, trio.SocketStream):
                if connection.abort:
                    # A transfer cut short must not look complete: reset, don't FIN.
                    with contextlib.suppress(OSError):
                        client.socket.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE
                        )
                client.socket.close()  # what aclose() does, without a checkpoint to survive
            else:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(client)

    def close_oldest_idle(self) -> bool:
        """Close the connection idle the longest (it ends at its next checkpoint); False if
        none is idle. Frees a connection slot, or a file descriptor when accept() runs out."""
        for connection in self.idle_connections:
            del self.idle_connections[connection]
            connection.idle_scope.cancel()
            return True
        return False

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

    def healthz_allowed(self, hosts: list[bytes]) -> bool:
        """Whether /healthz may answer a request with these Host headers (DNS rebinding:
        a page from elsewhere that got its name to resolve to 127.0.0.1 names itself)."""
        if len(hosts) != 1:
            return False
        name = hdr.host_name(hosts[0])
        return name is not None and (is_loopback(name) or name in self.settings.healthz_hosts)

    async def open_stream(self, head: Opening, route: Action) -> TunnelStream:
        """A stream for `head` on the route's link: the tunnel's, or the direct one.

        Raises TunnelUnavailable (no link in time), StreamLimit and FrameTooLarge.
        """
        if route is Action.DIRECT:
            assert self.direct is not None, "the agent runs a direct link when a rule needs it"
            link = await self.direct.wait_link()
        else:
            link = await self.link()
        try:
            return await link.open_stream(head)
        except LinkClosed as exc:
            where = "the direct link" if route is Action.DIRECT else "tunnel to the server"
            raise TunnelUnavailable(f"{where} is unavailable ({exc})") from exc

    def route(self, host: str, kind: str, client: trio.abc.Stream) -> Action:
        """Where traffic to `host` goes; raises `Blocked` when a block rule (or the default)
        refuses it. `kind` ("CONNECT") and `client` are only for the log line of a block."""
        decision = self.settings.routes.decide(host)
        if decision.action is Action.BLOCK:
            log.debug("blocked %s to %s from %s: %s", kind, host, peer_of(client),
                      decision.describe())  # fmt: skip
            raise Blocked(f"{host} is blocked by the agent's {decision.describe()}")
        return decision.action

    async def link(self) -> Link:
        """The tunnel link, waiting (bounded) while it is down."""
        link = self.tunnel.link
        if link is not None and link.is_open and not link.draining:
            return link  # the usual case: no timeout scope needed
        with trio.move_on_after(self.settings.request_wait_timeout):
            return await self.tunnel.wait_link()
        failure = self.tunnel.failure
        reason = str(failure) if failure else self.tunnel.last_error or "still connecting"
        raise TunnelUnavailable(
            f"tunnel to the server is unavailable after {self.settings.request_wait_timeout:g} s "
            f"({reason})"
        )


def peer_of(client: trio.abc.Stream) -> str:
    """A client's address, for logs."""
    if isinstance(client, trio.SocketStream):
        with contextlib.suppress(OSError):
            host, port, *_ = client.socket.getpeername()
            return f"{host}:{port}"
    return "client"


def _expected_auth(proxy_auth: str | None) -> bytes | None:
    """The Basic credentials token a client must present, or None when auth is off."""
    if proxy_auth is None:
        return None
    return base64.b64encode(proxy_auth.encode())


class _Quiet:
    """When a CONNECT tunnel that moves no bytes ends: `tunnel_idle_timeout` after the last
    byte, or `half_closed_timeout` once one side has ended its half.

    The deadline is moved on only when it would move by more than a hundredth of the
    timeout (at most a second): a tunnel moving 5,000 chunks a second then costs a clock
    read per chunk, not a cancel scope update.
    """

    def __init__(self, scope: trio.CancelScope, idle: float, half_closed: float) -> None:
        self.scope = scope
        self.idle = idle
        self.half_closed = half_closed
        self.one_side_ended = False
        self.limit = idle
        self._slack = min(1.0, idle / 100)
        scope.deadline = trio.current_time() + idle

    def moved(self) -> None:
        deadline = trio.current_time() + self.limit
        if deadline - self.scope.deadline > self._slack:
            self.scope.deadline = deadline

    def ended_one_way(self) -> None:
        if self.one_side_ended:
            return
        self.one_side_ended = True
        self.limit = min(self.idle, self.half_closed)
        self._slack = min(1.0, self.limit / 100)
        self.scope.deadline = trio.current_time() + self.limit

    def reason(self) -> str:
        if self.one_side_ended and self.limit < self.idle:
            return f"one side ended and no bytes for {self.limit:g} s (half_closed_timeout)"
        return f"no bytes either way for {self.limit:g} s (tunnel_idle_timeout)"


class ClientConnection:
    """One local client connection, served request by request."""

    def __init__(self, proxy: Proxy, client: trio.abc.HalfCloseableStream) -> None:
        self.proxy = proxy
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        self.idle_scope = trio.CancelScope()
        self._send_lock = trio.Lock()
        #: Close with a TCP reset: a transfer was cut short (the tunnel failed mid-way).
        self.abort = False
        #: Why this connection only gets a 503 (over max_client_connections), or None.
        self.refusal: str | None = None
        self.auth_failures = 0
        #: Bytes read from the client for HTTP (not tunnels): logged instead of the bytes.
        self.received = 0
        # The request being served, for the metrics and the access log: its kind (None for
        # the agent's own pages), the status answered, its stream, and whether a tunnel or
        # relay broke after it was accepted.
        self.kind: str | None = None
        self.status: int | None = None
        self.stream: TunnelStream | None = None
        self.cut = False
        #: The request being answered is a HEAD: our own answers then carry no body.
        self.head_request = False

    def peer(self) -> str:
        """The client's address, for logs."""
        return peer_of(self.client)

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
            self.received += len(data)
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
        reason: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
        close: bool = False,
    ) -> None:
        """A complete small response of our own, if a response can still be sent.

        `reason` is its token in X-Fluidity-Reason; a failure also carries `text` in
        X-Fluidity-Error, for clients that show no body (curl after a failed CONNECT).
        """
        if self.h11.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            raise _ClientGone("response already started; aborting the connection")
        body = text.encode() if text.endswith("\n") else (text + "\n").encode()
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"via", hdr.VIA),
            (REASON_HEADER, reason),
            *(extra or []),
        ]
        if status >= 400:
            headers.append((ERROR_HEADER, header_text(text)))
        if close or status >= 500 or self.proxy.shutting_down:
            headers.append((b"connection", b"close"))
        self.status = status
        await self._send(h11.Response(status_code=status, headers=headers, reason=_phrase(status)))
        if not self.head_request:  # h11 frames a HEAD answer without a body
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    # -- the request loop -----------------------------------------------------------------

    async def serve(self) -> None:
        gone = False
        try:
            await self._serve_requests()
        except* h11.RemoteProtocolError as group:
            await self._malformed(_first(group))
        except* _ClientGone as group:
            log.debug("client connection ended: %s", _first(group))
            gone = True
        if not (gone or self.abort):
            await self._linger()

    async def _serve_requests(self) -> None:
        settings = self.proxy.settings
        while not self.proxy.shutting_down:
            request = await self._next_request(settings)
            if request is None:
                return
            if self.refusal is not None:
                await self._send_simple(
                    503,
                    self.refusal,
                    reason=b"too-many-connections",
                    extra=[(b"retry-after", b"1")],
                    close=True,
                )
                return
            self.proxy._request_started()
            metrics = self.proxy.metrics
            started = trio.current_time() if metrics.access.enabled else 0.0
            self.status = self.stream = None
            self.cut = False
            failed = True
            try:
                keep_alive = await self._handle(request)
                failed = False
            finally:
                self.proxy._request_ended()
                metrics.exchange_done(
                    self.kind,
                    request.method,
                    request.target,
                    self.status,
                    self.stream,
                    failed or self.cut,
                    started,
                    self.peer,
                )
            if not keep_alive or self.h11.our_state is not h11.DONE:
                return
            if self.h11.their_state is h11.SEND_BODY:
                # A bodiless request still has its EndOfMessage waiting in h11's buffer.
                self.h11.next_event()
            if self.h11.their_state is not h11.DONE:
                return  # the client did not finish its body; don't guess where it ends
            self.h11.start_next_cycle()

    async def _malformed(self, exc: h11.RemoteProtocolError) -> None:
        """Answer a request h11 refused: its kind and size, never its bytes."""
        token = b"malformed-request"
        if exc.error_status_hint == 431:  # h11's max_incomplete_event_size, nothing else
            # Over MAX_HEAD_SIZE and no end of the head in sight: it could never be sent on.
            status, kind = 431, "request head too large"
            if b"\n" not in self.h11.trailing_data[0]:
                status, kind = 414, "request line too long"
            what = "request line" if status == 414 else "request head"
            token = b"head-too-large"
            reason = (
                f"{_phrase(status).decode()}: the {what} is over {MAX_HEAD_SIZE} bytes, "
                "more than the tunnel carries"
            )
        else:
            status, kind = exc.error_status_hint, describe_h11_error(exc)
            reason = f"{_phrase(status).decode()}: {kind}"
        log.info("refused a request from %s: %s (%d bytes received on the connection)",
                 self.peer(), kind, self.received)  # fmt: skip
        if self.h11.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            with contextlib.suppress(_ClientGone, h11.LocalProtocolError):
                await self._send_simple(status, reason, reason=token, close=True)
        elif self.h11.our_state is h11.SEND_BODY:
            self.abort = True  # a response cut short must not look complete

    async def _linger(self) -> None:
        """After an answer, read and drop what the client still sends (bounded), then return
        for the close: closing with unread bytes resets the connection, and a reset can
        destroy the answer before the client reads it."""
        if self.h11.our_state not in {h11.DONE, h11.MUST_CLOSE}:
            return  # nothing was answered, or the connection switched protocols
        if self.h11.their_state in {h11.DONE, h11.MUST_CLOSE, h11.CLOSED}:
            return  # the whole request was read
        received = 0
        with trio.move_on_after(LINGER_TIMEOUT):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.client.send_eof()
                while received < LINGER_BYTES:
                    data = await self.client.receive_some(READ_SIZE)
                    if not data:
                        return
                    received += len(data)

    async def _next_request(self, settings: ProxySettings) -> h11.Request | None:
        """Wait for the next request head; None when the client is done or went idle.

        One cancel scope serves both waits: the idle timeout until the first byte, then the
        head timeout; `begin_shutdown` and `close_oldest_idle` cancel it to close idle
        connections.
        """
        if self.proxy.shutting_down:
            return None
        idle_timeout, head_timeout = settings.idle_timeout, settings.head_timeout
        if self.refusal is not None:
            idle_timeout = head_timeout = min(head_timeout, REFUSE_TIMEOUT)
        scope = self.idle_scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout)
        with scope:
            if self._need_data():
                idle = self.proxy.idle_connections
                idle[self] = None
                try:
                    first = await self.client.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                finally:
                    idle.pop(self, None)
                if not first:
                    return None
                self.received += len(first)
                self.h11.receive_data(bytes(first))
            event = self.h11.next_event()
            if event is h11.NEED_DATA:  # the head did not come whole: the head timeout runs
                scope.deadline = trio.current_time() + head_timeout
                event = await self._receive_event()
            return event if isinstance(event, h11.Request) else None
        if self.proxy.shutting_down or not self.h11.trailing_data[0]:
            return None
        raise h11.RemoteProtocolError("request head not received in time", 408)

    def _need_data(self) -> bool:
        return self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]

    async def _handle(self, request: h11.Request) -> bool:
        """Serve one request; True if the connection may be kept alive."""
        self.head_request = request.method == b"HEAD"
        headers = list(request.headers)  # once: h11's Headers iterate slowly, by index
        if request.method == b"CONNECT":
            self.kind = "connect"
        else:
            self.kind = None if request.target.startswith(b"/") else "http"
        expected = self.proxy._auth
        if expected is not None and not _is_pac_request(request):
            problem = _auth_problem(hdr.get(headers, b"proxy-authorization"), expected)
            if problem is not None:
                return await self._auth_required(problem)
        try:
            if request.method == b"CONNECT":
                await self._connect(request)
                return False
            if request.target.startswith(b"/"):
                await self._local(request, headers)
                return True
            hdr.check_framing(headers)
            if hdr.is_websocket_upgrade(headers):
                self.kind = "websocket"
                await self._websocket(request, headers)
                return False
            await self._forward(request, headers)
            return True
        except BadRequest as exc:
            await self._send_simple(400, f"Bad request: {exc}", reason=b"bad-request")
            return False
        except _Refused as exc:
            await self._send_simple(exc.status, exc.reason, reason=exc.token, close=True)
            return False
        except Blocked as exc:
            await self._send_simple(403, f"Forbidden: {exc}", reason=b"route-blocked", close=True)
            return False
        except TunnelUnavailable as exc:
            await self._send_simple(502, str(exc), reason=b"tunnel-unavailable")
            return False
        except StreamLimit as exc:
            # The tunnel works but carries as many streams as the server allows: busy, not
            # broken; the client may try again shortly.
            await self._send_simple(
                503,
                f"the tunnel is busy: {exc}",
                reason=b"tunnel-busy",
                extra=[(b"retry-after", b"1")],
            )
            return False

    async def _auth_required(self, problem: str) -> bool:
        """407; after MAX_AUTH_ATTEMPTS on this connection, 407 and close."""
        self.auth_failures += 1
        last = self.auth_failures >= MAX_AUTH_ATTEMPTS
        if problem == "no credentials":
            log.debug("proxy authentication requested from %s", self.peer())
        else:
            self.proxy.auth_failures.record(
                "proxy authentication failed from %s: %s", self.peer(), problem
            )
        text = "Proxy authentication required"
        if last:
            text += f" ({self.auth_failures} failed attempts on this connection; closing it)"
        await self._send_simple(
            407,
            text,
            reason=b"proxy-auth-required",
            extra=[(b"proxy-authenticate", b'Basic realm="fluidity"')],
            close=last,
        )
        return not last

    # -- the agent's own endpoints --------------------------------------------------------

    async def _local(self, request: h11.Request, headers: hdr.HeaderList) -> None:
        path = request.target.split(b"?", 1)[0]
        hosts = hdr.get(headers, b"host")
        allowed = self.proxy.healthz_allowed(hosts)
        if request.method in {b"GET", b"HEAD"} and (
            path in _LOCAL_PATHS or (path == b"/" and allowed)  # else "this is a proxy"
        ):
            if not allowed:
                await self._send_simple(
                    421,
                    f"{path.decode()} answers only to a loopback Host (127.0.0.1, [::1], "
                    "localhost, with or without a port) or one listed in healthz_hosts: a page "
                    "that got its own name to resolve to this address must not read it (DNS "
                    "rebinding)",
                    reason=b"misdirected-host",
                )
                return
            if path == b"/metrics":
                accept = b", ".join(hdr.get(headers, b"accept")).decode("latin-1")
                text, content_type = self.proxy.metrics.render(accept)
                await self._send_simple(
                    200, text.decode(), reason=b"metrics", content_type=content_type.encode()
                )
                return
            if path == _PAC_PATH:
                # The proxy the browser is to use is the address it fetched this file from.
                name = hdr.host_name(hosts[0])
                assert name is not None  # healthz_allowed checked it
                proxy = pac.proxy_address(name, hdr.host_port(hosts[0]))
                await self._send_simple(
                    200, pac.pac_file(self.proxy.settings.routes, proxy),
                    reason=b"pac-file", content_type=pac.CONTENT_TYPE,
                )  # fmt: skip
                return
            status, body = self.proxy.health()
            if path == b"/":  # a browser visiting the agent's address: the status page
                await self._send_simple(
                    200,
                    status_page(body, f"http://{self._own_address()}"),
                    reason=b"status-page",
                    content_type=b"text/html; charset=utf-8",
                )
                return
            await self._send_simple(
                status,
                json.dumps(body, indent=2),
                reason=b"healthz",
                content_type=b"application/json",
            )
            return
        proxy = f"http://{self._own_address()}"
        await self._send_simple(
            400,
            "This is Fluidity's HTTP proxy, not a web server. Configure it as your HTTP and "
            f"HTTPS proxy (for example `curl -x {proxy} https://example.com`); {proxy}/ in a "
            f"browser or {proxy}/healthz shows the tunnel's state; {proxy}/proxy.pac is a proxy "
            f"auto-config file for browsers; {proxy}/metrics has Prometheus metrics.",
            reason=b"not-a-proxy-request",
        )

    def _own_address(self) -> str:
        """The address this client reached the agent at (host:port), for examples."""
        if isinstance(self.client, trio.SocketStream):
            with contextlib.suppress(OSError):
                host, port, *_ = self.client.socket.getsockname()
                return host_port(host, port)
        return "127.0.0.1:8080"

    # -- plain HTTP -----------------------------------------------------------------------

    async def _open(self, head: Opening, route: Action) -> TunnelStream:
        try:
            self.stream = await self.proxy.open_stream(head, route)
            return self.stream
        except FrameTooLarge as exc:
            refused = _too_large(head, exc)
            log.info("refused a request from %s: %s", self.peer(), refused.reason)
            raise refused from None

    async def _forward(self, request: h11.Request, headers: hdr.HeaderList) -> None:
        target = hdr.parse_target(request.target)
        route = self.proxy.route(target.host, "request", self.client)
        body = hdr.has_body(headers)
        head = Request(
            0,
            request.method,
            target.url,
            tuple(hdr.request_headers(headers, target)),
            end_stream=not body,
        )
        stream = await self._open(head, route)
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
        self.status = reply.status
        pending = [
            self._encode(
                h11.Response(
                    status_code=reply.status,
                    reason=reply.reason or _phrase(reply.status),
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
        body_timeout = self.proxy.settings.body_timeout
        with trio.move_on_after(body_timeout) as scope:
            while True:
                event = await self._receive_event()
                scope.deadline = trio.current_time() + body_timeout
                if isinstance(event, h11.Data):
                    await stream.send_all(event.data)
                    del event  # not kept while the client's next chunk is awaited
                elif isinstance(event, h11.EndOfMessage):
                    await stream.send_eof()
                    return
                else:
                    raise _ClientGone("client closed the connection during the request body")
        raise _ClientGone(f"the client paused its request body for {body_timeout:g} s")

    async def _tunnel_failed(self, exc: BaseException) -> None:
        """A stream broke: 502 if nothing was answered yet, else reset the client connection
        (a response cut short must not look complete, even one delimited by the close)."""
        if isinstance(exc, StreamReset) and exc.code == ErrorCode.UPSTREAM_ERROR:
            reason, token = f"the origin failed: {exc.message}", b"origin-failed"
        else:
            reason, token = f"the tunnel failed: {exc}", b"tunnel-failed"
        log.warning("request failed: %s", reason)
        if self.h11.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            self.abort = True
        await self._send_simple(502, reason, reason=token)

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
        await self._send_simple(
            status,
            ack.error or f"the server refused ({ack.status})",
            reason=upstream_reason(status),
        )
        return None

    # -- CONNECT ----------------------------------------------------------------------------

    async def _connect(self, request: h11.Request) -> None:
        host, port = hdr.parse_authority(request.target)
        route = self.proxy.route(host, "CONNECT", self.client)
        stream = await self._open(Connect(0, host, port), route)
        log.debug("CONNECT %s:%d", host, port)
        async with stream:
            ack = await self._accepted(stream, ConnectAck)
            if ack is None:
                return
            self.status = 200
            await self._send(
                h11.Response(status_code=200, headers=[], reason=b"Connection Established")
            )
            trailing, _ = self.h11.trailing_data
            if await carry_tunnel(self.client, stream, trailing, self.proxy.settings):
                self.abort = self.cut = True

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
        route = self.proxy.route(target.host, "WebSocket", self.client)
        stream = await self._open(head, route)
        log.debug("WebSocket %s://%s", target.scheme, target.authority.decode())
        async with stream:
            ws_ack = await self._accepted(stream, WebSocketAck)
            if ws_ack is None:
                return
            subprotocol = ws_ack.subprotocol
            self.status = 101
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
                self.cut = True
                log.info("WebSocket relay ended: %s", group.exceptions[0])


async def carry_tunnel(
    client: trio.abc.HalfCloseableStream,
    stream: TunnelStream,
    trailing: bytes,
    settings: ProxySettings,
) -> bool:
    """Carry an accepted Connect stream (HTTP CONNECT or SOCKS) until it ends; True if the
    tunnel failed mid-way, so that the client connection is closed with a reset."""
    head = stream.head
    assert isinstance(head, Connect)
    quiet = None
    failed = False
    try:
        if trailing:
            await stream.send_all(trailing)
        quiet = await relay_bytes(client, stream, settings)
    except* (LinkClosed, StreamReset) as group:  # the relay's nursery wraps them
        # The client must see a failure, not the clean end of a shorter stream.
        log.info("tunnel to %s:%d failed: %s", head.host, head.port, group.exceptions[0])
        failed = True
    if quiet is not None:
        stream.reset(ErrorCode.CANCEL, f"tunnel closed by the agent: {quiet}")
        log.info("tunnel to %s:%d closed: %s", head.host, head.port, quiet)
    return failed


async def relay_bytes(
    client: trio.abc.HalfCloseableStream, stream: TunnelStream, settings: ProxySettings
) -> str | None:
    """Relay until both sides have ended; returns why, if a timeout ended it instead."""
    client_done = False

    async def client_to_tunnel() -> None:
        nonlocal client_done
        while True:
            try:
                # Reads only when the bytes can go at once (see send_from): a busy link
                # leaves them in the client's socket, not in our memory.
                sent = await stream.send_from(client, READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stream.reset(ErrorCode.CANCEL, "client connection lost")
                raise
            if not sent:
                client_done = True
                quiet.ended_one_way()
                await stream.send_eof()
                return
            quiet.moved()

    async def tunnel_to_client() -> None:
        while data := await stream.receive_some():
            quiet.moved()
            await client.send_all(data)
            del data  # not kept while the next chunk is awaited, maybe for minutes
        quiet.ended_one_way()
        if not client_done:  # else the close that follows says it all
            await client.send_eof()

    with trio.CancelScope() as scope:
        quiet = _Quiet(scope, settings.tunnel_idle_timeout, settings.half_closed_timeout)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_to_tunnel)
                await tunnel_to_client()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    return quiet.reason() if scope.cancelled_caught else None


_PAC_PATH = b"/proxy.pac"
_LOCAL_PATHS = frozenset({b"/healthz", b"/metrics", _PAC_PATH})


def _is_pac_request(request: h11.Request) -> bool:
    """A browser fetches a PAC file as a plain GET, without proxy credentials."""
    return request.method in {b"GET", b"HEAD"} and request.target.split(b"?", 1)[0] == _PAC_PATH


def _too_large(head: Opening, exc: FrameTooLarge) -> _Refused:
    """414 when the target alone makes the head too large for a frame, else 431."""
    fits = f"a request's target and headers must fit in {exc.limit} bytes"
    if isinstance(head, Connect):
        return _Refused(431, f"Request Header Fields Too Large: the CONNECT request is too "
                             f"large for the tunnel ({exc.size} bytes; {fits})")  # fmt: skip
    bare = (
        attrs.evolve(head, headers=())
        if isinstance(head, Request)
        else attrs.evolve(head, headers=(), subprotocols=())
    )
    if len(encode_bytes(bare)) - 4 > exc.limit:
        return _Refused(414, f"URI Too Long: the request target ({len(head.url)} bytes) is too "
                             f"long for the tunnel ({fits})")  # fmt: skip
    return _Refused(431, f"Request Header Fields Too Large: the request headers are too large "
                         f"for the tunnel ({exc.size} bytes with the target; {fits})")  # fmt: skip


def _first(group: BaseExceptionGroup[Any]) -> Any:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _auth_problem(supplied: list[bytes], expected: bytes) -> str | None:
    """What is wrong with the Proxy-Authorization headers (never their value), or None."""
    if not supplied:
        return "no credentials"
    if len(supplied) != 1:
        return "more than one Proxy-Authorization header"
    scheme, _, token = supplied[0].strip().partition(b" ")
    if scheme.lower() != b"basic":
        return "not Basic credentials"
    if not hmac.compare_digest(token.strip(), expected):
        return "wrong user or password"
    return None
