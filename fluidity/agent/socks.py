"""The agent's SOCKS5 listener: the `socks5` protocol on a client socket, Connect streams behind.

A SOCKS connection is served like an HTTP CONNECT: it counts against max_client_connections,
goes where the routing rules send it (the tunnel, the direct link, or refused), opens one
Connect stream, and is relayed by the same code with the same idle timeouts, ending with a
TCP reset when the tunnel fails mid-way. Credentials are proxy_auth's user and password.

The server's answer to the Connect becomes the SOCKS reply code (`reply_for`)::

    ConnectAck 200                         0x00 succeeded
    403 (egress policy), or a block rule   0x02 connection not allowed by ruleset
    502 connection refused                 0x05 connection refused
    502 other (no such host, unreachable)  0x04 host unreachable
    504 (the connect timed out)            0x06 TTL expired
    no tunnel in time, busy, anything else 0x01 general SOCKS server failure
"""

from __future__ import annotations

import logging

import trio

from fluidity.protocol import Connect, ConnectAck
from fluidity.startup import host_port
from fluidity.tunnel import FrameTooLarge, LinkClosed, StreamLimit, StreamReset, TunnelStream

from .proxy import READ_SIZE, Blocked, Proxy, carry_tunnel, peer_of
from .socks5 import (
    NEED_DATA,
    AuthFailed,
    ConnectRequest,
    Refused,
    Reply,
    Socks5Server,
    SocksProtocolError,
)
from .tunnel_client import TunnelUnavailable

log = logging.getLogger(__name__)


def reply_for(ack: ConnectAck) -> Reply:
    """The SOCKS reply for the server's answer to a Connect (see the module docstring)."""
    if ack.success:
        return Reply.SUCCEEDED
    if ack.status == 403:
        return Reply.NOT_ALLOWED
    if ack.status == 502:
        # egress.ConnectRefused says "connection to host:port refused".
        if ack.error.startswith("connection to ") and ack.error.endswith(" refused"):
            return Reply.CONNECTION_REFUSED
        return Reply.HOST_UNREACHABLE
    if ack.status == 504:
        return Reply.TTL_EXPIRED
    return Reply.GENERAL_FAILURE


def _credentials(proxy_auth: str | None) -> tuple[bytes, bytes] | None:
    if proxy_auth is None:
        return None
    user, _, password = proxy_auth.partition(":")
    return user.encode(), password.encode()


class _Gone(Exception):
    """The client closed the connection during the negotiation."""


async def handle_socks(proxy: Proxy, client: trio.abc.HalfCloseableStream) -> None:
    """Entry point for the SOCKS listener."""
    await proxy.serve_connection(SocksConnection(proxy, client))


class SocksConnection:
    """One SOCKS5 client connection: negotiation, one Connect stream, the relay."""

    def __init__(self, proxy: Proxy, client: trio.abc.HalfCloseableStream) -> None:
        self.proxy = proxy
        self.client = client
        self.protocol = Socks5Server(_credentials(proxy.settings.proxy_auth))
        self.idle_scope = trio.CancelScope()
        self.abort = False
        self.refusal: str | None = None
        # For the metrics and the access log: the HTTP status the outcome stands for (200
        # accepted, the server's refusal, 403 blocked, 502 no tunnel) and the stream.
        self.status: int | None = None
        self.stream: TunnelStream | None = None

    async def serve(self) -> None:
        peer = peer_of(self.client)
        try:
            request = await self._negotiate()
        except SocksProtocolError as exc:
            log.info("refused a SOCKS connection from %s: %s", peer, exc)
            return
        except _Gone:
            log.debug("SOCKS client %s left during the negotiation", peer)
            return
        if request is None:
            return
        if self.refusal is not None or self.proxy.shutting_down:
            log.info("refused SOCKS CONNECT %s:%d from %s: %s", request.host, request.port, peer,
                     self.refusal or "the agent is shutting down")  # fmt: skip
            await self._reply(Reply.GENERAL_FAILURE)
            return
        self.proxy._request_started()
        metrics = self.proxy.metrics
        started = trio.current_time() if metrics.access.enabled else 0.0
        failed = True
        try:
            await self._connect(request, peer)
            failed = False
        finally:
            self.proxy._request_ended()
            target = host_port(request.host, request.port).encode()
            metrics.exchange_done("socks", b"CONNECT", target, self.status, self.stream,
                                  failed or self.abort, started, lambda: peer)  # fmt: skip

    async def _send_pending(self) -> None:
        data = self.protocol.data_to_send()
        if data:
            try:
                await self.client.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Gone from exc

    async def _reply(self, code: Reply) -> None:
        self.protocol.reply(code)
        try:
            await self._send_pending()
        except _Gone:
            log.debug("SOCKS client left before its reply")

    async def _negotiate(self) -> ConnectRequest | None:
        """Greeting, authentication and request, within head_timeout; None if the client
        was refused (the answer is sent) or timed out."""
        timeout = self.proxy.settings.head_timeout
        scope = self.idle_scope = trio.CancelScope(deadline=trio.current_time() + timeout)
        with scope:
            while True:
                event = self.protocol.next_event()
                await self._send_pending()
                if event is NEED_DATA:
                    try:
                        data = await self.client.receive_some(READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise _Gone from exc
                    if not data:
                        raise _Gone
                    self.protocol.receive_data(bytes(data))
                elif isinstance(event, AuthFailed):
                    self.proxy.auth_failures.record(
                        "SOCKS authentication failed from %s: %s", peer_of(self.client),
                        event.reason,
                    )  # fmt: skip
                    return None
                elif isinstance(event, Refused):
                    log.info("refused a SOCKS request from %s: %s", peer_of(self.client),
                             event.reason)  # fmt: skip
                    return None
                else:
                    assert isinstance(event, ConnectRequest)
                    return event
        if not self.proxy.shutting_down:
            log.info("SOCKS client %s did not finish its request within %g s (%s)",
                     peer_of(self.client), timeout, self.protocol.state)  # fmt: skip
        return None

    async def _connect(self, request: ConnectRequest, peer: str) -> None:
        host, port = request.host, request.port
        what = f"SOCKS CONNECT {host}:{port}"
        try:
            route = self.proxy.route(host, "SOCKS CONNECT", self.client)
            stream = self.stream = await self.proxy.open_stream(Connect(0, host, port), route)
        except Blocked:
            self.status = 403
            await self._reply(Reply.NOT_ALLOWED)
            return
        except (TunnelUnavailable, StreamLimit, FrameTooLarge) as exc:
            self.status = 502
            log.warning("%s from %s failed: %s", what, peer, exc)
            await self._reply(Reply.GENERAL_FAILURE)
            return
        log.debug("%s", what)
        async with stream:
            try:
                ack = await stream.wait_reply()
            except (LinkClosed, StreamReset) as exc:
                log.warning("%s failed: the tunnel failed: %s", what, exc)
                await self._reply(Reply.GENERAL_FAILURE)
                return
            assert isinstance(ack, ConnectAck)
            self.status = ack.status
            code = reply_for(ack)
            if code is not Reply.SUCCEEDED:
                log.info("%s refused (%d, SOCKS reply %d): %s", what, ack.status, code, ack.error)
                await self._reply(code)
                return
            self.protocol.reply(code)
            try:
                await self._send_pending()
            except _Gone:
                return
            trailing = self.protocol.trailing_data
            if await carry_tunnel(self.client, stream, trailing, self.proxy.settings):
                self.abort = True
