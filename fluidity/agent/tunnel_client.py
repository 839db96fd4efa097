"""Keeps one link to the server up: connect, TLS, handshake, and reconnect with backoff.

Proxied requests ask for the current link with `wait_link()`, which waits (bounded by the
caller) while the tunnel is down instead of failing at once.
"""

from __future__ import annotations

import logging
import math
import ssl
import time

import trio

from fluidity.protocol import Role
from fluidity.tunnel import Link, LinkClosed, LinkConfig, open_link

from .lifecycle import AuthError, Backoff, ControlPlaneError, Lifecycle
from .metrics import AgentMetrics

log = logging.getLogger(__name__)


class TunnelUnavailable(Exception):
    """No link to the server came up in time; the message says what the last attempt hit."""


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
        lifecycle: Lifecycle | None = None,
        metrics: AgentMetrics | None = None,
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
        self.lifecycle = lifecycle
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self._changed = trio.Event()
        self._demand = trio.Event()
        self._stopping = False

    def _set(self, state: str, link: Link | None = None) -> None:
        self.state = state
        self.link = link
        self._changed.set()
        self._changed = trio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def wait_state(self, *states: str) -> None:
        """Wait until the tunnel is in one of `states` (for supervisors and tests)."""
        while self.state not in states:
            await self._changed.wait()

    async def wait_link(self) -> Link:
        """The open link, waiting for one while the tunnel is (re)connecting or waking."""
        while True:
            link = self.link
            if link is not None and link.is_open and not link.draining:
                return link
            if self._stopping:
                raise TunnelUnavailable("the agent is shutting down")
            self._demand.set()  # a sleeping server is woken by the first request that waits
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
        """Connect and keep reconnecting until cancelled (waking the server when it sleeps).

        Raises ControlPlaneError when the server cannot be woken at start (a refused API key,
        or no server within connection_timeout): the agent should exit then.
        """
        task_status.started()
        attempt = 0
        first = True
        need_wake = self.lifecycle is not None
        deadline = math.inf
        while not self.stopping:
            if self.lifecycle is not None and need_wake:
                if not await self._wake(self.lifecycle, first):
                    continue
                need_wake = False
                deadline = trio.current_time() + self.lifecycle.connection_timeout
            first = False
            self._set("connecting")
            if await self._connect_and_serve():
                attempt = 0
                if self.lifecycle is not None:
                    need_wake = await self._server_went_down(self.lifecycle)
                    deadline = trio.current_time() + self.lifecycle.connection_timeout
                continue
            self._set("down")
            if self.lifecycle is not None:
                if trio.current_time() >= deadline:
                    self.last_error = (
                        f"the server did not accept the tunnel within "
                        f"{self.lifecycle.connection_timeout:g} s ({self.last_error})"
                    )
                    log.error("%s", self.last_error)
                    need_wake = True
                    continue
                delay = self.lifecycle.retry_interval
            else:
                delay = self.backoff.delay(attempt)
            attempt += 1
            log.info("tunnel unavailable (%s); retrying in %.1f s", self.last_error, delay)
            await trio.sleep(delay)
        self._set("stopped")

    async def _connect_and_serve(self) -> bool:
        """One connection attempt; True if the link came up (it has ended when this returns)."""
        where = f"{self.host}:{self.port}"
        try:
            transport = await self._connect()
            async with open_link(transport, Role.AGENT, self.link_config) as link:
                self.connects += 1
                self.connected_since = time.time()
                self.last_error = None
                log.info("tunnel up: %s (%s)", where, link.peer_name or "server")
                self._set("up", link)
                self.metrics.link_up(link)
                try:
                    await link.wait_closed()
                finally:
                    self.metrics.link_down(link)
                self.last_error = str(link.error) if link.error else None
                log.warning("tunnel down: %s", self.last_error or "closed")
                return True
        except trio.TooSlowError as exc:
            self.last_error = f"connecting to {where} timed out after {self.connect_timeout} s"
            self.metrics.handshake_failed(exc)
        except (OSError, trio.BrokenResourceError, LinkClosed) as exc:
            self.last_error = f"{where}: {_describe(exc)}"
            self.metrics.handshake_failed(exc)
        finally:
            self.connected_since = None
        return False

    async def _wait_for_demand(self) -> None:
        """Sleep until a proxied request asks for the link."""
        self._demand = trio.Event()
        self._set("asleep")
        log.info("the server is asleep; the next proxied request wakes it")
        await self._demand.wait()

    async def _wake(self, lifecycle: Lifecycle, first: bool) -> bool:
        """Wake the server and learn its address; False if it did not come up in time."""
        if not first:
            await self._wait_for_demand()
        self._set("waking")
        started = trio.current_time()
        try:
            status = await lifecycle.control.wake()
            log.info("wake: %s (%s)", status.action or status.state, status.state)
            with trio.move_on_after(lifecycle.connection_timeout):
                status = await lifecycle.control.wait_until_up(lifecycle.retry_interval, started)
                self.host = status.address or self.host
                self.port = status.port or self.port
                log.info("server is up at %s:%d after %.0f s", self.host, self.port,
                         trio.current_time() - started)  # fmt: skip
                self.metrics.woke(trio.current_time() - started)
                return True
            reason = (
                f"the server did not start within {lifecycle.connection_timeout:g} s "
                "(connection_timeout); check the ECS service's events and the server's logs"
            )
        except AuthError:
            raise
        except ControlPlaneError as exc:
            reason = f"could not wake the server: {exc}"
        self.last_error = reason
        self.metrics.wake_failed()
        if first:
            raise ControlPlaneError(reason)
        log.error("%s", reason)
        self._set("down")
        return False

    async def _server_went_down(self, lifecycle: Lifecycle) -> bool:
        """After the link ended: True if the server is stopped (the next request wakes it)."""
        if self.stopping:
            return False
        try:
            status = await lifecycle.control.status()
        except AuthError:
            raise
        except ControlPlaneError as exc:
            log.warning("status check failed (%s); reconnecting", exc)
            return False
        if status.state == "running" and status.address:
            self.host = status.address  # a replaced task has a new address
            self.port = status.port or self.port
        return status.is_down

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
