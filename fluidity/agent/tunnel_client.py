"""Keeps one link to the server up: connect, TLS, handshake, and reconnect with backoff.

Proxied requests ask for the current link with `wait_link()`, which waits (bounded by the
caller) while the tunnel is down instead of failing at once.
"""

from __future__ import annotations

import logging
import random
import ssl
import time

import attrs
import trio

from fluidity.protocol import Role
from fluidity.tunnel import Link, LinkClosed, LinkConfig, open_link

log = logging.getLogger(__name__)


class TunnelUnavailable(Exception):
    """No link to the server came up in time; the message says what the last attempt hit."""


@attrs.frozen
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog style), capped."""

    minimum: float = 0.5
    maximum: float = 30.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.minimum * 2 ** max(0, attempt))
        return random.uniform(self.minimum, max(self.minimum, ceiling))


class TunnelClient:
    """Owner of the agent's link; run `run()` in a nursery for as long as the agent lives."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        server_name: str,
        link_config: LinkConfig,
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.link_config = link_config
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff()
        self.link: Link | None = None
        self.state = "connecting"
        self.last_error: str | None = None
        self.connects = 0
        self.connected_since: float | None = None
        self._changed = trio.Event()
        self._stopping = False

    def _set(self, state: str, link: Link | None = None) -> None:
        self.state = state
        self.link = link
        self._changed.set()
        self._changed = trio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def wait_link(self) -> Link:
        """The open link, waiting for one while the tunnel is (re)connecting."""
        while True:
            link = self.link
            if link is not None and link.is_open and not link.draining:
                return link
            if self._stopping:
                raise TunnelUnavailable("the agent is shutting down")
            await self._changed.wait()

    async def _connect(self) -> trio.SSLStream[trio.SocketStream]:
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(self.host, self.port)
            tls = trio.SSLStream(tcp, self.ssl_context, server_hostname=self.server_name)
            try:
                await tls.do_handshake()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(tcp)
                raise
            return tls

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and keep reconnecting until cancelled."""
        task_status.started()
        attempt = 0
        where = f"{self.host}:{self.port}"
        while not self.stopping:
            self._set("connecting")
            try:
                transport = await self._connect()
                async with open_link(transport, Role.AGENT, self.link_config) as link:
                    attempt = 0
                    self.connects += 1
                    self.connected_since = time.time()
                    self.last_error = None
                    log.info("tunnel up: %s (%s)", where, link.peer_name or "server")
                    self._set("up", link)
                    await link.wait_closed()
                    self.last_error = str(link.error) if link.error else None
                    log.warning("tunnel down: %s", self.last_error or "closed")
            except trio.TooSlowError:
                self.last_error = f"connecting to {where} timed out after {self.connect_timeout} s"
            except (OSError, trio.BrokenResourceError, LinkClosed) as exc:
                self.last_error = f"{where}: {_describe(exc)}"
            self.connected_since = None
            self._set("down")
            delay = self.backoff.delay(attempt)
            attempt += 1
            log.info("tunnel unavailable (%s); retrying in %.1f s", self.last_error, delay)
            await trio.sleep(delay)
        self._set("stopped")

    async def drain(self) -> None:
        """Graceful close of the current link (GoAway, let streams finish); no reconnect."""
        self._stopping = True
        link = self.link
        self._set("stopping", link)
        if link is not None:
            await link.drain("agent shutting down")


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
