"""Keeps one link to the server up: connect, TLS, handshake, and reconnect with backoff.

Proxied requests ask for the current link with `wait_link()`, which waits (bounded by the
caller) while the tunnel is down instead of failing at once. A request that arrives while the
tunnel waits out its backoff starts the next attempt now (at most one per
reconnect_min_delay), so a restarted server is used as soon as it is back. Failed attempts are
classified (`failures`): a mistake in the configuration is logged at ERROR once and fails
waiting requests at once with the cause; a server that is restarting is retried quietly.
"""

from __future__ import annotations

import logging
import math
import ssl
import time

import trio

from fluidity.protocol import ErrorCode, Role
from fluidity.startup import host_port
from fluidity.tunnel import Link, LinkClosed, LinkConfig, open_link

from .failures import LinkFailure, classify
from .lifecycle import AuthError, Backoff, ControlPlaneError, Lifecycle, ServerStatus
from .metrics import AgentMetrics

log = logging.getLogger(__name__)

#: While requests wait for the link, the longest pause between attempts.
DEMAND_INTERVAL = 0.5


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
        #: Why the last attempt failed (None once a link is up).
        self.failure: LinkFailure | None = None
        #: The failure last logged, so a repeated one is not logged again.
        self._logged: LinkFailure | None = None
        self.connects = 0
        self.connected_since: float | None = None
        self.lifecycle = lifecycle
        self.metrics = metrics if metrics is not None else AgentMetrics()
        #: The server as the control plane last described it (with api_url).
        self.server_status: ServerStatus | None = None
        #: When the current wake began (trio time), while waking.
        self.wake_started: float | None = None
        #: Whether a wake was ever accepted: only then is there a server to kill on exit.
        self.woken = False
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
            self._demand.set()  # wakes a sleeping server, or cuts the reconnect backoff short
            await self._changed.wait()
            failure = self.failure
            if self.state == "down" and failure is not None and failure.permanent:
                # An attempt made since this request came failed on the configuration:
                # waiting longer cannot help, and the client should see why now.
                raise TunnelUnavailable(str(failure))

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
            self._log_failure(delay)
            await self._backoff(delay)
        self._set("stopped")

    def _log_failure(self, delay: float) -> None:
        """A permanent cause at ERROR once, a transient one at INFO once, repeats at DEBUG."""
        failure = self.failure
        if failure is None:
            log.info("tunnel unavailable (%s); retrying in %.1f s", self.last_error, delay)
            return
        if failure == self._logged:
            log.debug("tunnel unavailable (%s); retrying in %.1f s", failure.message, delay)
            return
        self._logged = failure
        if failure.permanent:
            log.error("cannot connect to the server: %s (retrying every %g s at most)",
                      failure, self.backoff.maximum)  # fmt: skip
        else:
            log.info("tunnel unavailable (%s); retrying in %.1f s", failure, delay)

    async def _backoff(self, delay: float) -> None:
        """Sleep `delay`, or less once a request waits for the link: then the next attempt
        starts DEMAND_INTERVAL (or reconnect_min_delay if shorter) after this one failed, so
        a waiting request never pays a long backoff, and waiting clients cannot make the
        agent hammer the server."""
        failed_at = trio.current_time()
        self._demand = trio.Event()
        with trio.move_on_after(delay):
            await self._demand.wait()
            await trio.sleep_until(failed_at + min(delay, self.backoff.minimum, DEMAND_INTERVAL))

    async def _connect_and_serve(self) -> bool:
        """One connection attempt; True if the link came up (it has ended when this returns)."""
        where = host_port(self.host, self.port)
        tls_done = False
        try:
            transport = await self._connect()
            tls_done = True
            async with open_link(transport, Role.AGENT, self.link_config) as link:
                self.connects += 1
                self.connected_since = time.time()
                self.last_error = None
                self.failure = self._logged = None
                log.info("tunnel up: %s (%s)", where, link.peer_name or "server")
                self._set("up", link)
                self.metrics.link_up(link)
                try:
                    await link.wait_closed()
                finally:
                    self.metrics.link_down(link)
                self.last_error = str(link.error) if link.error else None
                goaway = link.conn.goaway_received
                if self.stopping or (goaway is not None and goaway.code == ErrorCode.NO_ERROR):
                    # Our own shutdown, or the server's (a restart, the Sleep schedule):
                    # nothing went wrong.
                    log.info("tunnel closed: %s", self.last_error or "closed")
                else:
                    log.warning("tunnel down: %s", self.last_error or "closed")
                return True
        except (trio.TooSlowError, OSError, trio.BrokenResourceError, LinkClosed) as exc:
            failure = classify(exc, where, tls_done=tls_done, connect_timeout=self.connect_timeout)
            self.failure = failure
            self.last_error = failure.message
            self.metrics.handshake_failed(failure.cause)
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
        started = self.wake_started = trio.current_time()
        self._set("waking")
        try:
            status = self.server_status = await lifecycle.control.wake()
            self.woken = True
            log.info("wake: %s (%s)", status.action or status.state, status.state)
            with trio.move_on_after(lifecycle.connection_timeout):
                status = await lifecycle.control.wait_until_up(
                    lifecycle.retry_interval, started, self._wake_progress
                )
                self.host = status.address or self.host
                self.port = status.port or self.port
                log.info("server is up at %s after %.0f s", host_port(self.host, self.port),
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
        finally:
            self.wake_started = None
        self.last_error = reason
        self.metrics.wake_failed()
        if first:
            raise ControlPlaneError(reason)
        log.error("%s", reason)
        self._set("down")
        return False

    def _wake_progress(self, status: ServerStatus) -> None:
        self.server_status = status

    def wake_progress(self) -> dict[str, object] | None:
        """While waking: seconds so far, the control plane's estimate and the task's state."""
        if self.wake_started is None:
            return None
        status = self.server_status
        return {
            "elapsed_seconds": round(trio.current_time() - self.wake_started),
            "estimated_seconds": status.estimated_seconds if status else None,
            "task_status": status.task_status if status else None,
            "server_state": status.state if status else None,
        }

    async def _server_went_down(self, lifecycle: Lifecycle) -> bool:
        """After the link ended: True if the server is stopped (the next request wakes it)."""
        if self.stopping:
            return False
        try:
            status = self.server_status = await lifecycle.control.status()
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
