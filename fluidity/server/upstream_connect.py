"""Connect streams: a raw TCP tunnel to host:port (what HTTP CONNECT asks the agent for).

Bytes are relayed both ways with half-close preserved: each direction ends on its own, and
the stream finishes when both have. Every read waits for the other side to take the previous
chunk (the tunnel's credit, the socket's send buffer), so nothing accumulates. If either side
fails, both are closed.

An idle tunnel is ended (see `idle`): an agent that ended its side and waits on a silent origin
gets an EOF; otherwise the stream is reset with the reason.
"""

from __future__ import annotations

import logging

import trio

from fluidity.protocol import Connect, ConnectAck, ErrorCode
from fluidity.tunnel import FrameTooLarge, LinkClosed, StreamReset, TunnelStream

from .activity import ActivityTracker
from .egress import EgressPolicy, UpstreamError, open_tcp
from .idle import DEFAULT_HALF_CLOSED_TIMEOUT, DEFAULT_IDLE_TIMEOUT, IdleTimer

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
_REASON_TOO_LARGE = "the upstream connection failed (the reason is too large for the tunnel)"
_SOCKET_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def serve_connect(
    stream: TunnelStream,
    *,
    policy: EgressPolicy,
    connect_timeout: float,
    activity: ActivityTracker,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    half_closed_timeout: float = DEFAULT_HALF_CLOSED_TIMEOUT,
) -> None:
    """Open the connection the stream asks for, answer ConnectAck, then relay until done."""
    head = stream.head
    assert isinstance(head, Connect)
    label = f"stream {stream.stream_id} CONNECT {head.host}:{head.port}"
    try:
        sock = await open_tcp(head.host, head.port, policy=policy, connect_timeout=connect_timeout)
    except UpstreamError as exc:
        log.info("%s: %d %s", label, exc.status, exc.reason)
        try:
            await stream.send_reply(ConnectAck(stream.stream_id, exc.status, exc.reason))
        except FrameTooLarge:  # a reason quoting a huge host name: nothing was sent
            await stream.send_reply(ConnectAck(stream.stream_id, exc.status, _REASON_TOO_LARGE))
        return
    idle = IdleTimer(idle_timeout, half_closed_timeout)
    try:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await relay(stream, sock, activity, idle)
    finally:
        sock.socket.close()  # a plain socket: closing cannot block
    if idle.expired is not None:
        log.info("%s: closed, %s", label, idle.expired)
    else:
        log.debug("%s: closed", label)


async def relay(
    stream: TunnelStream, sock: trio.SocketStream, activity: ActivityTracker, idle: IdleTimer
) -> None:
    """Relay until both directions have ended, either side fails, or `idle` runs out."""
    agent_ended = False
    #: The origin's direction waits for the origin (not for the agent to take bytes).
    origin_awaited = False

    async def tunnel_to_socket(cancel: trio.CancelScope) -> None:
        nonlocal agent_ended
        try:
            while data := await stream.receive_some(READ_SIZE):
                activity.touch()
                idle.moved()
                await sock.send_all(data)
                del data  # not kept while the next chunk is awaited, maybe for minutes
            await sock.send_eof()
            agent_ended = True
            idle.ended()
        except (StreamReset, LinkClosed):
            cancel.cancel()
        except _SOCKET_ERRORS:
            stream.reset(ErrorCode.UPSTREAM_ERROR, "the upstream connection failed")
            cancel.cancel()

    async def socket_to_tunnel(cancel: trio.CancelScope) -> None:
        nonlocal origin_awaited
        try:
            while True:
                # Reads only when the bytes can go at once (see send_from): a busy link
                # leaves them in the origin's socket, not in our memory.
                origin_awaited = True
                sent = await stream.send_from(sock, READ_SIZE)
                origin_awaited = False
                if not sent:
                    break
                activity.touch()
                idle.moved()
            await stream.send_eof()
            idle.ended()
        except (StreamReset, LinkClosed):
            cancel.cancel()
        except _SOCKET_ERRORS:
            stream.reset(ErrorCode.UPSTREAM_ERROR, "the upstream connection failed")
            cancel.cancel()

    with idle.enforced():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tunnel_to_socket, nursery.cancel_scope)
            await socket_to_tunnel(nursery.cancel_scope)
    if idle.expired is not None:
        # send_from waits for the origin's bytes, then for the agent's credit: only the first
        # means the origin has nothing more to say.
        if agent_ended and origin_awaited and not stream.send_blocked:
            await stream.send_eof()  # the agent's client waits for an answer: there is none
        else:
            stream.reset(ErrorCode.CANCEL, f"the tunnel was idle: {idle.expired}")
