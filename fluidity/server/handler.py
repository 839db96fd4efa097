"""The server's handler for tunnel streams: one call per stream the agent opens.

`open_stream_handler()` builds it with the one origin pool every request shares (and the task
that closes the pool's expired connections) and closes the pool when the server stops; the link
runs `handler(stream)` for each new stream.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from fluidity.protocol import StreamKind
from fluidity.tunnel import LinkClosed, StreamReset, TunnelStream

from .activity import ActivityTracker
from .egress import EgressPolicy
from .idle import DEFAULT_HALF_CLOSED_TIMEOUT, DEFAULT_IDLE_TIMEOUT
from .origin_pool import OriginPool, origin_ssl_context
from .upstream_connect import serve_connect
from .upstream_http import serve_request
from .upstream_ws import DEFAULT_MAX_MESSAGE, serve_websocket

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0


@attrs.define
class StreamHandler:
    """Serves each stream by kind: HTTP request, CONNECT tunnel, or WebSocket."""

    policy: EgressPolicy
    pool: OriginPool
    activity: ActivityTracker
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    #: TLS for wss:// origins (https:// ones use the pool's).
    ssl_context: ssl.SSLContext = attrs.field(factory=origin_ssl_context)
    max_ws_message: int = DEFAULT_MAX_MESSAGE
    #: CONNECT tunnels and WebSockets end after this long with nothing moving (see `idle`).
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    half_closed_timeout: float = DEFAULT_HALF_CLOSED_TIMEOUT

    async def __call__(self, stream: TunnelStream) -> None:
        self.activity.opened()
        try:
            if stream.kind is StreamKind.WEBSOCKET:
                # The relay reads the tunnel throughout, so it sees a reset itself, and it
                # must not be cancelled: closing the origin gracefully needs its reader task.
                await serve_websocket(
                    stream,
                    policy=self.policy,
                    connect_timeout=self.connect_timeout,
                    ssl_context=self.ssl_context,
                    activity=self.activity,
                    max_message_size=self.max_ws_message,
                    idle_timeout=self.idle_timeout,
                    half_closed_timeout=self.half_closed_timeout,
                )
                return
            try:
                # A request waiting for a slow origin, or a tunnel the agent half-closed,
                # reads nothing from the stream and would never notice it went away.
                with trio.CancelScope() as scope:
                    stream.cancel_on_failure(scope)
                    if stream.kind is StreamKind.REQUEST:
                        await serve_request(stream, self.pool, self.activity)
                    else:
                        await serve_connect(
                            stream,
                            policy=self.policy,
                            connect_timeout=self.connect_timeout,
                            activity=self.activity,
                            idle_timeout=self.idle_timeout,
                            half_closed_timeout=self.half_closed_timeout,
                        )
            except* (StreamReset, LinkClosed):
                pass  # the agent's side is gone; the upstream side was closed on the way out
        finally:
            self.activity.closed()


@asynccontextmanager
async def open_stream_handler(
    policy: EgressPolicy | None = None,
    *,
    activity: ActivityTracker | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    verify: ssl.SSLContext | None = None,
    max_ws_message: int = DEFAULT_MAX_MESSAGE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    half_closed_timeout: float = DEFAULT_HALF_CLOSED_TIMEOUT,
) -> AsyncIterator[StreamHandler]:
    """A handler with its shared origin pool, closed when the block ends.

    `verify` is the TLS context for https and wss origins, used as it is (default:
    `origin_ssl_context()`, the system CA store).
    """
    policy = policy if policy is not None else EgressPolicy()
    context = verify if verify is not None else origin_ssl_context()
    pool = OriginPool(
        policy, connect_timeout=connect_timeout, read_timeout=read_timeout, ssl_context=context
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.close_expired)
            yield StreamHandler(
                policy,
                pool,
                activity if activity is not None else ActivityTracker(),
                connect_timeout,
                read_timeout,
                context,
                max_ws_message,
                idle_timeout,
                half_closed_timeout,
            )
            nursery.cancel_scope.cancel()
    finally:
        pool.close()
