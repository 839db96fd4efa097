"""Runs the server: the mTLS tunnel listener, the health endpoint, and every agent link."""

from __future__ import annotations

import logging
import signal
import ssl
from typing import Any

import trio

from fluidity.protocol import Role, Settings, WindowPolicy
from fluidity.readyfile import write_ready_file
from fluidity.startup import (
    StartupError,
    expired,
    host_port,
    open_listeners,
    settle_collector,
    startup_error,
)
from fluidity.telemetry import failure_cause
from fluidity.tls import server_ssl_context
from fluidity.tunnel import Link, LinkClosed, LinkConfig, open_link

from .activity import ActivityTracker
from .egress import EgressPolicy
from .handler import StreamHandler, open_stream_handler
from .handshakes import PendingHandshakes, source_of
from .health import serve_health
from .metrics import MetricsEmitter, MetricsSettings, MetricsSetupError
from .prom import ServerMetrics
from .resolver import StaticResolver, install
from .settings import ServerConfig

log = logging.getLogger("fluidity.server")


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "unknown peer"
    return host_port(host, port)


def _source(stream: trio.SocketStream) -> str:
    try:
        host = stream.socket.getpeername()[0]
    except OSError:
        return "unknown peer"
    return source_of(host)


def _handshake_failure(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(exc) or type(exc).__name__


def _agent_name(tls: trio.SSLStream[trio.SocketStream]) -> str:
    cert = tls.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "agent"


class TunnelServer:
    """Accepts agents: TLS handshake (bounded in time and number), then one link each, in
    its own nursery."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        handler: StreamHandler,
        link_config: LinkConfig,
        *,
        handshake_timeout: float,
        max_links: int,
        max_handshakes: int = 64,
        max_handshakes_per_source: int = 8,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.handler = handler
        self.link_config = link_config
        self.handshake_timeout = handshake_timeout
        self.max_links = max_links
        self.links: set[Link] = set()
        #: Connections before the end of their TLS handshake (see `handshakes`).
        self.handshakes = PendingHandshakes(max_handshakes, max_handshakes_per_source)
        self.draining = False
        self.metrics = metrics if metrics is not None else ServerMetrics()

    async def handle(self, tcp: trio.SocketStream) -> None:
        peer = _peer(tcp)
        if self.draining or len(self.links) >= self.max_links:
            log.warning("refusing %s: %s", peer, "draining" if self.draining else "too many links")
            self.metrics.handshake_failed("refused")
            await trio.aclose_forcefully(tcp)
            return
        pending = self.handshakes.admit(_source(tcp), trio.current_time() + self.handshake_timeout)
        try:
            with pending.scope:
                # No TLS state (tens of KB) for a connection that has sent nothing yet.
                await trio.lowlevel.wait_readable(tcp.socket)
                pending.talking = True
                tls = trio.SSLStream(tcp, self.ssl_context, server_side=True)
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.warning("TLS handshake from %s failed: %s", peer, _handshake_failure(exc))
            self.metrics.handshake_failed(failure_cause(exc))
            await trio.aclose_forcefully(tcp)
            return
        finally:
            self.handshakes.done(pending)
        if pending.scope.cancelled_caught:
            if pending.shed:
                log.debug("closing %s: shed for a newer connection", peer)
            else:
                log.warning("TLS handshake from %s timed out", peer)
            self.metrics.handshake_failed("shed" if pending.shed else "timeout")
            await trio.aclose_forcefully(tcp)
            return
        name = _agent_name(tls)
        try:
            async with open_link(tls, Role.SERVER, self.link_config, self.handler) as link:
                self.links.add(link)
                self.metrics.link_up(link)
                log.info("agent %r connected from %s", name, peer)
                try:
                    await link.wait_closed()
                finally:
                    self.links.discard(link)
                    self.metrics.link_down(link)
                log.info("agent %r disconnected: %s", name, link.error or "closed")
        except LinkClosed as exc:
            log.warning("link with %s failed to start: %s", peer, exc)
            self.metrics.handshake_failed("link")

    async def drain(self) -> None:
        """GoAway to every link; returns when all have closed (bound it at the call site)."""
        self.draining = True
        async with trio.open_nursery() as nursery:
            for link in list(self.links):
                nursery.start_soon(link.drain, "server shutting down")


def _install_resolver(config: ServerConfig) -> None:
    hosts = dict(config.static_hosts)
    if config.resolver == "static" or hosts:
        install(StaticResolver(hosts, fallback_to_system=config.resolver != "static"))


async def serve(
    config: ServerConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGTERM/SIGINT, then drain: GoAway, open streams finish, exit."""
    assert config.server_cert is not None, "load_config checks the certificates"
    assert config.server_key is not None
    assert config.ca_cert is not None
    _install_resolver(config)
    context = server_ssl_context(config.server_cert, config.server_key, config.ca_cert)
    fix = "issue new certificates (`fluidity certs init`, docs/certificates.md)"
    if (problem := expired(config, "server_cert", fix)) is not None:
        log.error("%s", problem)
    activity = ActivityTracker()
    prom = ServerMetrics(activity, access_log=config.access_log)
    # -- CloudWatch metrics (fluidity/server/metrics.py): check before listening ------------
    metrics: MetricsEmitter | None = None
    if config.metrics_enabled:
        metrics = MetricsEmitter(MetricsSettings.from_config(config), activity)
        await metrics.check_credentials()  # MetricsSetupError: run() exits with code 2
    # -- end metrics ---------------------------------------------------------------------------
    link_config = LinkConfig(
        settings=Settings(peer_name="fluidity-server"),
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        policy=WindowPolicy(config.max_window, config.receive_budget),
        handshake_timeout=config.handshake_timeout,
    )
    async with open_stream_handler(
        policy=EgressPolicy(config.egress_allow, config.egress_deny),
        activity=activity,
        metrics=prom,
        connect_timeout=config.upstream_connect_timeout,
        read_timeout=config.upstream_read_timeout,
        idle_timeout=config.tunnel_idle_timeout,
        half_closed_timeout=config.half_closed_timeout,
    ) as handler:
        server = TunnelServer(
            context,
            handler,
            link_config,
            handshake_timeout=config.handshake_timeout,
            max_links=config.max_links,
            max_handshakes=config.max_handshakes,
            max_handshakes_per_source=config.max_handshakes_per_source,
            metrics=prom,
        )

        def report() -> tuple[int, dict[str, Any]]:
            snap = activity.snapshot()
            body = {
                "status": "draining" if server.draining else "ok",
                "links": len(server.links),
                "handshakes": len(server.handshakes),
                "active_connections": snap.active,
                "last_activity_epoch": snap.last_activity_epoch,
            }
            return (503 if server.draining else 200), body

        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            # Before any task: a busy port is one line (StartupError), not a traceback.
            tunnel_listeners = await open_listeners(
                config, "listen_host", "listen_port", "the agents' TLS listener"
            )
            health_listeners = await open_listeners(
                config, "health_host", "health_port", "the health endpoint"
            )
            async with trio.open_nursery() as nursery:
                port = tunnel_listeners[0].socket.getsockname()[1]
                health_port = health_listeners[0].socket.getsockname()[1]

                async def health(stream: trio.SocketStream) -> None:
                    await serve_health(stream, report, prom.render)

                nursery.start_soon(trio.serve_listeners, health, health_listeners)
                if metrics is not None:  # metrics: emits at once, then every interval
                    nursery.start_soon(metrics.run)
                async with trio.open_nursery() as links:
                    accept_scope = trio.CancelScope()

                    async def accept() -> None:
                        with accept_scope:
                            await trio.serve_listeners(
                                server.handle, tunnel_listeners, handler_nursery=links
                            )

                    nursery.start_soon(accept)
                    log.info("tunnel listening on %s (mTLS, TLS 1.3); health on %s",
                             host_port(config.listen_host, port),
                             host_port(config.health_host, health_port))  # fmt: skip
                    write_ready_file(
                        config.ready_file, {"listen_port": port, "health_port": health_port}
                    )
                    task_status.started()
                    async for signum in signals:
                        log.info("%s received: draining", signal.Signals(signum).name)
                        break
                    accept_scope.cancel()
                    for listener in tunnel_listeners:
                        await listener.aclose()
                    with trio.move_on_after(config.shutdown_grace) as grace:
                        await server.drain()
                    if grace.cancelled_caught:
                        log.warning("links still open after %.0f s; closing", config.shutdown_grace)
                    links.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    log.info("server stopped")


def run(config: ServerConfig) -> int:
    """Blocking entry point for the CLI; returns the process exit code."""
    settle_collector()
    try:
        trio.run(serve, config)
    except MetricsSetupError as exc:  # metrics: enabled without credentials or region
        log.error("server failed to start: %s", exc)
        return 2
    except StartupError as exc:
        log.error("server failed to start: %s", exc)
        return 1
    except BaseExceptionGroup as group:
        if (startup := startup_error(group)) is None:
            raise
        log.error("server failed to start: %s", startup)
        return 1
    return 0
