"""Runs the agent: the tunnel client and the local proxy under one nursery, until a signal."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from fluidity.protocol import Settings, WindowPolicy
from fluidity.readyfile import write_ready_file
from fluidity.startup import (
    StartupError,
    expired,
    host_port,
    open_listeners,
    settle_collector,
    startup_error,
)
from fluidity.tls import client_ssl_context
from fluidity.tunnel import LinkConfig

from .burst import BurstLog
from .direct import DirectLink
from .lifecycle import AuthError, Backoff, ControlPlane, ControlPlaneError, Lifecycle
from .metrics import AgentMetrics
from .proxy import Proxy, ProxySettings
from .routing import Routes
from .settings import AgentConfig
from .socks import handle_socks
from .tunnel_client import TunnelClient

log = logging.getLogger("fluidity.agent")

StreamT = TypeVar("StreamT", bound=trio.abc.AsyncResource)

#: How long stopping the server may hold up the agent's exit.
KILL_TIMEOUT = 10.0
_NEW_CLIENT_CERT = "issue a new one with `fluidity certs client NAME --dir <CA directory>`"


def health(tunnel: TunnelClient, proxy: Proxy) -> tuple[int, dict[str, Any]]:
    link = tunnel.link
    body: dict[str, Any] = {
        "status": "ok" if tunnel.state in {"up", "asleep"} else "degraded",
        "tunnel": tunnel.state,
        "server": host_port(tunnel.host, tunnel.port),
        "connects": tunnel.connects,
        "last_error": tunnel.last_error,
        "active_requests": proxy.active_requests,
    }
    if tunnel.failure is not None:
        body["failure"] = tunnel.failure.as_json()
    if (wake := tunnel.wake_progress()) is not None:
        body["wake"] = wake
    if tunnel.server_status is not None:
        body["server_state"] = tunnel.server_status.state
    if link is not None and link.is_open:
        stats = link.statistics()
        body["open_streams"] = stats.open_streams
        body["rtt_ms"] = round(link.rtt * 1000, 2) if link.rtt is not None else None
        if tunnel.connected_since is not None:
            body["up_seconds"] = round(time.time() - tunnel.connected_since)
    return (200 if tunnel.state in {"up", "asleep"} else 503), body


async def serve(
    config: AgentConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    assert config.client_cert is not None, "load_config checks the certificates"
    assert config.client_key is not None
    assert config.ca_cert is not None
    context = client_ssl_context(config.client_cert, config.client_key, config.ca_cert)
    if (problem := expired(config, "client_cert", _NEW_CLIENT_CERT)) is not None:
        log.error("%s", problem)
    lifecycle = None
    if config.api_url is not None:
        assert config.api_key is not None, "load_config requires api_key with api_url"
        lifecycle = Lifecycle(
            ControlPlane(config.api_url, config.api_key),
            connection_timeout=config.connection_timeout,
            retry_interval=config.connection_retry_interval,
        )
    # Requests wait for the tunnel; while a sleeping server wakes, that can take a cold start.
    request_wait = config.request_wait_timeout
    if lifecycle is not None:
        request_wait = max(request_wait, config.connection_timeout)
    metrics = AgentMetrics(access_log=config.access_log)
    tunnel = TunnelClient(
        config.server_host,
        config.server_port,
        ssl_context=context,
        server_name=config.server_name,
        link_config=LinkConfig(
            settings=Settings(peer_name="fluidity-agent"),
            keepalive_interval=config.keepalive_interval,
            keepalive_timeout=config.keepalive_timeout,
            policy=WindowPolicy(config.max_window, config.receive_budget),
        ),
        connect_timeout=config.connect_timeout,
        backoff=Backoff(config.reconnect_min_delay, config.reconnect_max_delay),
        lifecycle=lifecycle,
        metrics=metrics,
    )
    routes = Routes.parse(config.routes, config.default_route)
    max_connections = connection_budget(config.max_client_connections)
    direct = None
    if routes.uses_direct:
        direct = DirectLink(
            connect_timeout=config.connect_timeout,
            idle_timeout=config.tunnel_idle_timeout,
            half_closed_timeout=config.half_closed_timeout,
            max_streams=max_connections,
            policy=WindowPolicy(config.max_window, config.receive_budget),
        )
    proxy = Proxy(
        tunnel,
        ProxySettings(
            proxy_auth=config.proxy_auth,
            request_wait_timeout=request_wait,
            idle_timeout=config.client_idle_timeout,
            tunnel_idle_timeout=config.tunnel_idle_timeout,
            half_closed_timeout=config.half_closed_timeout,
            max_connections=max_connections,
            healthz_hosts=frozenset(config.healthz_hosts),
            routes=routes,
        ),
        health=lambda: health(tunnel, proxy),
        metrics=metrics,
        direct=direct,
    )
    metrics.watch(tunnel, proxy)
    try:
        await _serve(config, tunnel, proxy, task_status)
    except* AuthError:
        raise  # the key is wrong: kill would be refused too
    except* ControlPlaneError:
        # Gave up at start: a server woken for nothing should not run until Sleep stops it
        # (one never woken, as when the API cannot be reached, needs no kill).
        if lifecycle is not None and config.kill_on_exit and tunnel.woken:
            await _kill(lifecycle.control)
        raise
    if lifecycle is not None and config.kill_on_exit and tunnel.woken:
        await _kill(lifecycle.control)
    log.info("agent stopped")


async def _serve(
    config: AgentConfig,
    tunnel: TunnelClient,
    proxy: Proxy,
    task_status: trio.TaskStatus[None],
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # Before any task: a busy port is one line (StartupError), and wakes no server.
        listeners = await open_listeners(config, "listen_host", "listen_port", "the proxy")
        port = listeners[0].socket.getsockname()[1]
        socks_listeners = []
        if config.socks_port is not None:
            socks_listeners = await open_listeners(
                config, "listen_host", "socks_port", "the SOCKS5 proxy"
            )
        async with trio.open_nursery() as nursery:
            await nursery.start(tunnel.run)
            if proxy.direct is not None:
                await nursery.start(proxy.direct.run)
            served = [(listener, proxy.handle) for listener in listeners]
            socks = functools.partial(handle_socks, proxy)
            served += [(listener, socks) for listener in socks_listeners]
            async with trio.open_nursery() as handlers:
                # One scope per accept loop: a scope may be entered once.
                accept_scopes = [trio.CancelScope() for _ in served]
                for (listener, handler), scope in zip(served, accept_scopes, strict=True):
                    nursery.start_soon(
                        _accept, listener, handler, handlers, scope, proxy.close_oldest_idle
                    )
                where = host_port(config.listen_host, port)
                log.info("proxy listening on http://%s (tunnel to %s)", where,
                         host_port(config.server_host, config.server_port))  # fmt: skip
                ready = {"listen_port": port}
                if socks_listeners:
                    ready["socks_port"] = socks_listeners[0].socket.getsockname()[1]
                    log.info("SOCKS5 proxy listening on %s",
                             host_port(config.listen_host, ready["socks_port"]))  # fmt: skip
                if proxy.settings.routes.rules:
                    log.info("%d routing rules; default route: %s; PAC file at http://%s/proxy.pac",
                             len(proxy.settings.routes.rules), config.default_route,
                             where)  # fmt: skip
                write_ready_file(config.ready_file, ready)
                task_status.started()
                async for signum in signals:
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    break
                for scope in accept_scopes:
                    scope.cancel()
                for listener, _ in served:
                    await listener.aclose()
                proxy.begin_shutdown()
                with trio.move_on_after(config.shutdown_grace) as grace:
                    await proxy.wait_requests_done()
                if grace.cancelled_caught:
                    log.warning("%d requests still open after %.0f s; closing them",
                                proxy.active_requests, config.shutdown_grace)  # fmt: skip
                handlers.cancel_scope.cancel()
            with trio.move_on_after(2.0):
                await tunnel.drain()
            nursery.cancel_scope.cancel()


#: accept() failures that mean "out of descriptors or memory for now": wait, then go on.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Descriptors kept for the agent itself (listeners, the link, trio's wakeup and signal fds,
#: log files, control-plane calls, DNS) when sizing max_client_connections to `ulimit -n`.
FD_RESERVE = 32


async def _accept(
    listener: trio.abc.Listener[StreamT],
    handler: Callable[[StreamT], Awaitable[None]],
    handlers: trio.Nursery,
    scope: trio.CancelScope,
    make_room: Callable[[], bool] = lambda: False,
) -> None:
    """trio.serve_listeners' loop, minus its per-connection aclose_forcefully (~20 us of
    cancellation machinery): Proxy.handle closes every connection itself.

    Out of descriptors, it closes the oldest idle client connection (`make_room`) so that
    the next accept can succeed, and logs the burst once, not every retry.
    """
    failures = BurstLog(log, logging.ERROR)
    failed = 0
    since = 0.0
    with scope:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                if not failed:
                    since = trio.current_time()
                failed += 1
                freed = make_room()
                failures.record(
                    "accept failed: %s; %s, retrying every 0.1 s (raise `ulimit -n` or lower "
                    "max_client_connections)",
                    os.strerror(exc.errno),
                    "closed the oldest idle client connection" if freed else "no idle one to close",
                )
                await trio.sleep(0.1)
            else:
                if failed:
                    failures.end(
                        "accept works again after %d failures in %.1f s",
                        failed,
                        trio.current_time() - since,
                    )
                    failed = 0
                handlers.start_soon(handler, stream)


def connection_budget(wanted: int) -> int:
    """How many client connections the open-files limit allows, up to `wanted`.

    Raises the soft limit towards the hard one first (as Go's runtime does): the default soft
    limit (1024 on Linux, 256 on macOS) is a historical value, not a decision of the user.
    """
    try:
        import resource
    except ImportError:  # not POSIX: no such limit to fit
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    allowed = max(1, soft - FD_RESERVE)
    log.warning(
        "the open-files limit (ulimit -n) is %d: serving at most %d client connections at once, "
        "not max_client_connections (%d); raise the limit to serve more",
        soft,
        allowed,
        wanted,
    )
    return allowed


async def _kill(control: ControlPlane) -> None:
    """Stop the server on exit: bounded, and a failure is only logged."""
    with trio.move_on_after(KILL_TIMEOUT) as scope:
        try:
            status = await control.kill()
            log.info("server stopped by kill (%s)", status.action or status.state)
        except ControlPlaneError as exc:
            log.error("kill failed: %s (the Sleep schedule will stop the server)", exc)
    if scope.cancelled_caught:
        log.error("kill did not answer within %.0f s; the Sleep schedule will stop the server",
                  KILL_TIMEOUT)  # fmt: skip


def run(config: AgentConfig) -> int:
    """Blocking entry point for the CLI; returns the process exit code."""
    settle_collector()
    try:
        trio.run(serve, config)
    except StartupError as exc:
        log.error("agent failed to start: %s", exc)
        return 1
    except BaseExceptionGroup as group:
        if (startup := startup_error(group)) is not None:
            log.error("agent failed to start: %s", startup)
            return 1
        fatal, rest = group.split(ControlPlaneError)
        if fatal is None or rest is not None:
            raise
        log.error("agent stopped: %s", _first(fatal))
        return 1
    return 0


def _first(group: BaseExceptionGroup[ControlPlaneError]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
