"""WebSocket streams: the handshake with the origin, then messages and close codes both ways.

The agent completed (or will complete) its client's handshake itself; here the server makes its
own with the origin through trio-websocket, answers WebSocketAck with the origin's verdict, and
relays. Tunnel fragments are reassembled into whole messages (bounded by `max_message_size`)
because trio-websocket sends whole messages; the origin's messages go back as fragments sized
by the tunnel's credit. Closing follows RFC 6455: whoever closes first gets the other side's
echo. If the agent's stream is reset, the origin is closed with 1001 (going away); if the
origin vanishes, the agent is told 1006 (abnormal closure, never sent on the wire). A WebSocket
on which no message moves either way for `idle_timeout` seconds is closed both ways with 1001
(see `idle`); pings are not messages, so they do not keep it open.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterable

import h11
import trio
import trio_websocket
from wsproto.frame_protocol import CloseReason

from fluidity.httputil import HOP_BY_HOP, WEBSOCKET_HANDSHAKE, AbsoluteURL, parse_absolute_url
from fluidity.protocol import Headers, WebSocketAck, WebSocketClose, WebSocketOpen
from fluidity.tunnel import FrameTooLarge, LinkClosed, StreamReset, TunnelStream

from .activity import ActivityTracker
from .egress import EgressPolicy, UpstreamError, open_tcp
from .idle import DEFAULT_HALF_CLOSED_TIMEOUT, DEFAULT_IDLE_TIMEOUT, IdleTimer
from .origin_pool import request_error

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
#: How long each closing handshake (with the origin, or with the agent) may take.
CLOSE_TIMEOUT = 5.0

#: Headers trio-websocket writes itself, or that belong to a single hop.
_HANDSHAKE_HEADERS = HOP_BY_HOP | WEBSOCKET_HANDSHAKE | {b"host", b"content-length"}


def _end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in headers if bytes(n).lower() not in _HANDSHAKE_HEADERS]


def parse_url(url: str) -> AbsoluteURL:
    """Parse ws:// or wss:// (http/https are accepted as their WebSocket twins)."""
    try:
        target = parse_absolute_url(url)
    except ValueError:
        raise UpstreamError(400, "the WebSocket URL is not valid") from None
    if target.scheme not in ("ws", "wss", "http", "https") or not target.host:
        raise UpstreamError(400, "the WebSocket URL must be absolute ws:// or wss://")
    return target


async def _open_transport(
    target: AbsoluteURL,
    *,
    policy: EgressPolicy,
    connect_timeout: float,
    ssl_context: ssl.SSLContext,
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    sock = await open_tcp(target.host, target.port, policy=policy, connect_timeout=connect_timeout)
    if not target.secure:
        return sock
    tls = trio.SSLStream(sock, ssl_context, server_hostname=target.host, https_compatible=True)
    try:
        with trio.fail_after(connect_timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(sock)
        raise UpstreamError(504, f"TLS handshake with {target.host} timed out") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(sock)
        cause = exc.__cause__
        why = cause.reason if isinstance(cause, ssl.SSLError) and cause.reason else str(cause)
        raise UpstreamError(502, f"TLS handshake with {target.host} failed: {why}") from exc
    return tls


def _check_headers(headers: Headers) -> None:
    """Refuse (400) headers HTTP forbids before connecting: wsproto would raise h11's error,
    which quotes the offending value (a credential, maybe) into the logs."""
    try:
        h11.Request(method="GET", target="/", headers=[(b"Host", b"x"), *_end_to_end(headers)])
    except h11.LocalProtocolError as exc:
        raise UpstreamError(400, request_error(exc)) from None


def _wire_close(code: int, reason: str) -> tuple[int, str | None]:
    """A close code and reason that may go in a close frame (1005/1006/1015 may not)."""
    if code == CloseReason.NO_STATUS_RCVD:
        return CloseReason.NO_STATUS_RCVD, None  # wsproto sends an empty close frame
    if code in (CloseReason.ABNORMAL_CLOSURE, CloseReason.TLS_HANDSHAKE_FAILED):
        return CloseReason.GOING_AWAY, reason or None
    if not 1000 <= code <= 4999 or code == 1004:
        return CloseReason.NORMAL_CLOSURE, reason or None
    return code, reason or None


async def serve_websocket(
    stream: TunnelStream,
    *,
    policy: EgressPolicy,
    connect_timeout: float,
    ssl_context: ssl.SSLContext,
    activity: ActivityTracker,
    max_message_size: int = DEFAULT_MAX_MESSAGE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    half_closed_timeout: float = DEFAULT_HALF_CLOSED_TIMEOUT,
) -> None:
    """Handshake with the origin, answer WebSocketAck, relay until both sides have closed."""
    head = stream.head
    assert isinstance(head, WebSocketOpen)
    label = f"stream {stream.stream_id} WebSocket"
    try:
        target = parse_url(head.url)
        label = f"{label} {'wss' if target.secure else 'ws'}://{target.authority}"
        _check_headers(head.headers)
        transport = await _open_transport(
            target, policy=policy, connect_timeout=connect_timeout, ssl_context=ssl_context
        )
    except UpstreamError as exc:
        log.info("%s: %d %s", label, exc.status, exc.reason)
        await _refuse(stream, exc.status, exc.reason)
        return
    failure: UpstreamError | None = None
    refusal: Headers = ()
    try:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(connect_timeout) as handshake:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    transport,
                    target.authority,
                    target.resource,
                    subprotocols=head.subprotocols,
                    extra_headers=_end_to_end(head.headers),
                    max_message_size=max_message_size,
                )
            if handshake.cancelled_caught:
                failure = UpstreamError(
                    504, f"no WebSocket handshake from the origin in {connect_timeout:g} s"
                )
            else:
                accepted = tuple(_end_to_end(ws.handshake_headers))
                try:
                    await stream.send_reply(
                        WebSocketAck(stream.stream_id, 101, ws.subprotocol, accepted)
                    )
                except FrameTooLarge as exc:  # nothing was sent: refuse instead
                    failure = UpstreamError(502, _too_large(exc))
                try:
                    if failure is None:
                        log.debug("%s: open (subprotocol %r)", label, ws.subprotocol)
                        idle = IdleTimer(idle_timeout, half_closed_timeout)
                        await _Relay(stream, ws, activity, max_message_size, idle).run()
                        if idle.expired is not None:
                            log.info("%s: closed, %s", label, idle.expired)
                finally:
                    # Normally a no-op: both sides have closed. If the agent went away, the
                    # origin hears 1001; if the whole link is going, this handler is about to
                    # be cancelled (reader task and all), so the connection is just dropped.
                    if not isinstance(stream.error, LinkClosed):
                        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                            await ws.aclose(CloseReason.GOING_AWAY)
            nursery.cancel_scope.cancel()  # trio-websocket's reader task
    except* trio_websocket.ConnectionRejected as group:
        first = group.exceptions[0]
        status = 0
        if isinstance(first, trio_websocket.ConnectionRejected):
            status, refusal = first.status_code, tuple(_end_to_end(first.headers))
        failure = UpstreamError(
            status if 400 <= status < 600 else 502,
            f"the origin refused the WebSocket handshake (status {status})",
        )
    except* (StreamReset, LinkClosed):
        pass  # the agent or the link is gone: nobody to answer
    finally:
        await trio.aclose_forcefully(transport)
    if failure is not None:
        log.info("%s: %d %s", label, failure.status, failure.reason)
        await _refuse(stream, failure.status, failure.reason, refusal)
    log.debug("%s: closed", label)


def _too_large(exc: FrameTooLarge) -> str:
    return (
        f"the origin's handshake answer is too large for the tunnel "
        f"({exc.size} bytes encoded, at most {exc.limit})"
    )


async def _refuse(stream: TunnelStream, status: int, reason: str, headers: Headers = ()) -> None:
    """Answer a failed WebSocketAck; one too large for a frame becomes a bare 502."""
    try:
        await stream.send_reply(
            WebSocketAck(stream.stream_id, status, headers=headers, error=reason)
        )
    except FrameTooLarge as exc:
        await stream.send_reply(WebSocketAck(stream.stream_id, 502, error=_too_large(exc)))


class _Relay:
    """Both directions of an open WebSocket, and who has closed what."""

    def __init__(
        self,
        stream: TunnelStream,
        ws: trio_websocket.WebSocketConnection,
        activity: ActivityTracker,
        max_message_size: int,
        idle: IdleTimer,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.activity = activity
        self.max_message_size = max_message_size
        self.idle = idle
        #: We sent WebSocketClose to the agent.
        self.close_sent = False
        #: The agent (or our own check of its messages) started the close.
        self.tunnel_initiated = False
        #: Around the wait for the agent; gets a deadline once our close is sent.
        self.tunnel_scope = trio.CancelScope()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._upstream_to_tunnel, nursery.cancel_scope)
            nursery.start_soon(self._tunnel_to_upstream, nursery.cancel_scope)
            nursery.start_soon(self._close_when_idle, nursery.cancel_scope)

    async def _close_when_idle(self, relay: trio.CancelScope) -> None:
        """Idle too long: close both sides with 1001, as if the agent had asked to."""
        why = await self.idle.wait_idle()
        if why is not None and not self.close_sent:
            try:
                await self._fail_message(CloseReason.GOING_AWAY, f"idle: {why}")
            except (StreamReset, LinkClosed):
                relay.cancel()

    async def _close_tunnel(self, code: int, reason: str) -> None:
        if not self.close_sent:
            self.close_sent = True
            await self.stream.send_ws_close(code, reason)
        self.tunnel_scope.deadline = min(
            self.tunnel_scope.deadline, trio.current_time() + CLOSE_TIMEOUT
        )

    async def _close_upstream(self, code: int, reason: str) -> None:
        wire_code, wire_reason = _wire_close(code, reason)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.ws.aclose(wire_code, wire_reason)

    async def _upstream_to_tunnel(self, relay: trio.CancelScope) -> None:
        try:
            await self._upstream_messages(relay)
        finally:
            self.idle.ended()

    async def _upstream_messages(self, relay: trio.CancelScope) -> None:
        try:
            while True:
                try:
                    message = await self.ws.get_message()
                except trio_websocket.ConnectionClosed:
                    break
                self.activity.touch()
                self.idle.moved()
                if isinstance(message, str):
                    await self.stream.send_ws(message.encode("utf-8"), binary=False)
                else:
                    await self.stream.send_ws(message, binary=True)
                del message  # not kept while the next one is awaited
            if self.tunnel_initiated or self.close_sent:
                return  # the other direction completes this close
            closed = self.ws.closed
            code = closed.code if closed is not None else CloseReason.ABNORMAL_CLOSURE
            await self._close_tunnel(code, (closed.reason if closed is not None else None) or "")
        except (StreamReset, LinkClosed):
            relay.cancel()

    async def _tunnel_to_upstream(self, relay: trio.CancelScope) -> None:
        with self.tunnel_scope:
            try:
                await self._pump_tunnel()
            except (StreamReset, LinkClosed):
                relay.cancel()
            finally:
                self.idle.ended()

    async def _fail_message(self, code: int, reason: str) -> None:
        """A message from the agent cannot be delivered: close both sides with `code`."""
        self.tunnel_initiated = True
        await self._close_tunnel(code, reason)
        await self._close_upstream(code, reason)

    async def _pump_tunnel(self) -> None:
        parts = bytearray()
        binary = False
        while True:
            message = await self.stream.receive_ws()
            if message is None or isinstance(message, WebSocketClose):
                code: int
                reason: str
                if message is None:
                    code, reason = CloseReason.GOING_AWAY, "the tunnel stream ended"
                else:
                    code, reason = message.code, message.reason
                if not self.close_sent:
                    self.tunnel_initiated = True
                await self._close_upstream(code, reason)
                if not self.close_sent and message is not None:
                    await self._close_tunnel(code, reason)  # the echo, as RFC 6455 suggests
                return
            self.activity.touch()
            self.idle.moved()
            if self.close_sent:
                continue  # closing: what the agent still sends has nowhere to go
            if not parts:
                binary = message.binary
            if len(parts) + len(message.data) > self.max_message_size:
                parts.clear()
                await self._fail_message(
                    CloseReason.MESSAGE_TOO_BIG,
                    f"message larger than {self.max_message_size} bytes",
                )
                continue
            if not message.fin:
                parts += message.data
                continue
            payload = message.data if not parts else bytes(parts + message.data)
            parts.clear()
            if binary:
                data: str | bytes = payload
            else:
                try:
                    data = payload.decode("utf-8")
                except UnicodeDecodeError:
                    await self._fail_message(
                        CloseReason.INVALID_FRAME_PAYLOAD_DATA, "text message is not UTF-8"
                    )
                    continue
            # If the origin is closing, its close reaches the agent the other way.
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await self.ws.send_message(data)
            del message, payload, data  # not kept while the next message is awaited
