"""Settings of the agent, and the checks across them.

How settings are loaded, layered and reported is `fluidity.settings`; the reference in
docs/configuration.md is generated from these fields (a test keeps the two equal).
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from fluidity import tls
from fluidity.settings import (
    CERTS_FIX,
    MIB,
    PEM_HELP,
    ConfigError,
    after,
    budget,
    check_tls,
    host,
    names,
    non_negative,
    pem,
    port,
    positive,
    positive_int,
    remote_port,
    require,
    setting,
    shared,
    url,
    window,
)

from .routing import ACTIONS, check_routes

__all__ = ["AgentConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hosts(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(host(v).lower().rstrip(".") for v in values)


def _server_name(value: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", value):
        raise ValueError("expected a DNS name, the one in the server certificate")
    return value


def _proxy_auth(value: str) -> str:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("expected user:password with both parts non-empty")
    return value


@attrs.frozen
class AgentConfig:
    """Settings of the agent: the local HTTP proxy that carries connections to the server."""

    listen_host: str = setting(
        "127.0.0.1",
        "Address the local HTTP proxy listens on. Anything but a loopback address "
        "also requires proxy_auth.",
        check=host,
        metavar="HOST",
    )
    listen_port: int = setting(
        8080, "Port of the local HTTP proxy (0 picks a free port).", check=port
    )
    socks_port: int | None = setting(
        None,
        "Port of the local SOCKS5 proxy on listen_host (CONNECT, names resolved by the "
        "server; proxy_auth's user and password when set), e.g. 1080 as for `ssh -D`. "
        "Unset: no SOCKS listener; 0 picks a free port.",
        check=port,
        metavar="PORT",
    )
    server_host: str = setting(
        "127.0.0.1",
        "Address (IP or DNS name) of the server to connect to.",
        check=host,
        metavar="HOST",
    )
    server_port: int = setting(8443, "Port of the server's TLS listener.", check=remote_port)
    server_name: str = setting(
        "fluidity-server",
        "Name verified in the server's certificate (the server's IP address changes, its "
        "name does not; `fluidity certs init --server-name` sets it).",
        check=_server_name,
        metavar="NAME",
    )
    ca_cert: str | None = setting(
        None,
        "CA certificate that signed the server certificate." + PEM_HELP,
        check=pem,
        secret="pem",
        metavar="PATH|PEM",
    )
    client_cert: str | None = setting(
        None,
        "Client certificate presented to the server." + PEM_HELP,
        check=pem,
        secret="pem",
        metavar="PATH|PEM",
    )
    client_key: str | None = setting(
        None,
        "Private key of the client certificate." + PEM_HELP,
        check=pem,
        secret="pem",
        metavar="PATH|PEM",
    )
    proxy_auth: str | None = setting(
        None,
        "user:password that proxy clients must send (Proxy-Authorization: Basic). "
        "Required when listen_host is not a loopback address.",
        check=_proxy_auth,
        secret="auth",
        metavar="USER:PASSWORD",
    )
    max_client_connections: int = setting(
        512,
        "Most client connections open at once. At the limit a new connection closes the "
        "oldest idle keep-alive one, or gets 503 when none is idle. Lowered at start to "
        "what the open-files limit (`ulimit -n`) allows.",
        check=positive_int,
    )
    client_idle_timeout: float = setting(
        60.0, "Seconds an idle keep-alive client connection is kept open.", check=positive
    )
    tunnel_idle_timeout: float = setting(
        300.0,
        "Seconds a CONNECT tunnel may carry no bytes either way before it is closed.",
        check=positive,
    )
    half_closed_timeout: float = setting(
        60.0,
        "Seconds a CONNECT tunnel stays open without bytes once one side has ended its "
        "half (a client that closed its socket, an origin that sent EOF).",
        check=positive,
    )
    healthz_hosts: tuple[str, ...] = setting(
        (),
        "Host header values `GET /healthz` and `GET /proxy.pac` answer to besides loopback "
        "ones (`127.0.0.1`, `::1`, `localhost`); others get 421, against DNS rebinding.",
        check=_hosts,
        metavar="HOST",
    )
    routes: tuple[str, ...] = setting(
        (),
        "Routing rules, in order, each `ACTION PATTERN...`: ACTION is `direct` (the agent "
        "connects itself; the server is neither used nor woken), `tunnel` or `block` (403 "
        "naming the rule); a PATTERN is an exact host (`intranet.example`), a domain and "
        "every name under it (`.corp.example`), or an IP address or CIDR block (`10.0.0.0/8`, "
        "matched against addresses only; names are not resolved). The first rule that "
        "matches decides; `GET /proxy.pac` serves them to browsers. See docs/routing.md.",
        check=check_routes,
        metavar="RULE",
    )
    default_route: str = setting(
        "tunnel", "Where traffic that no rule of `routes` matches goes.", choices=ACTIONS
    )
    connect_timeout: float = setting(
        10.0,
        "Seconds allowed to connect to the server and do the TLS handshake (and to connect "
        "to a destination of a direct route).",
        check=positive,
    )
    request_wait_timeout: float = setting(
        30.0,
        "Seconds a proxied request waits for the tunnel to be up before it fails with 502 "
        "(with the control plane, at least `connection_timeout`: a cold start).",
        check=positive,
    )
    reconnect_min_delay: float = setting(
        0.5, "First delay, in seconds, before reconnecting after the link drops.", check=positive
    )
    reconnect_max_delay: float = setting(
        30.0,
        "Longest delay between reconnect attempts (the delay doubles up to it).",
        check=positive,
    )
    keepalive_interval: float = shared("keepalive_interval")
    keepalive_timeout: float = setting(
        45.0,
        "Seconds without any data from the server before the link is declared dead (a "
        "third of it while requests are open).",
        check=positive,
    )
    max_window: int = setting(
        16 * MIB,
        "Bytes a download's receive window may grow to (from 256 KiB) while the path and "
        "the client keep up; about 4x bandwidth x round trip fills a long path.",
        check=window,
    )
    receive_budget: int = setting(
        64 * MIB,
        "Bytes the receive windows of all the link's streams may grow to together: what "
        "stalled clients can make the agent hold.",
        check=budget,
    )
    shutdown_grace: float = setting(
        10.0,
        "Seconds open connections get to finish on shutdown before they are cut.",
        check=non_negative,
    )
    api_url: str | None = setting(
        None,
        "Base URL of the control-plane API (`POST /wake`, `GET /status`, `POST /kill`). When "
        "set, the agent wakes the server on start and on demand, connects to the address "
        "status reports, and kills the server on exit. Unset: no lifecycle (local use).",
        check=url,
        metavar="URL",
    )
    api_key: str | None = setting(
        None,
        "API key sent as `x-api-key` to the control-plane API. Required with `api_url`. "
        "Never logged.",
        secret="key",
        metavar="KEY",
    )
    connection_timeout: float = setting(
        300.0,
        "Seconds to wait for a woken server to accept the tunnel before giving up.",
        check=positive,
    )
    connection_retry_interval: float = setting(
        5.0,
        "Seconds between status polls and tunnel attempts while the server wakes.",
        check=positive,
    )
    kill_on_exit: bool = setting(
        True,
        "Stop the server (`POST /kill`) when the agent exits. Turn off when others share "
        "the server.",
    )
    ready_file: str | None = shared("ready_file")
    log_level: str = shared("log_level")
    log_format: str = shared("log_format")
    access_log: bool = setting(
        False,
        "Log a line at info per proxied request or tunnel (host, method, status, bytes each "
        "way, duration, stream id; never the path, query string or credentials).",
    )

    def check(self) -> None:
        """Checks across settings."""
        require(self, ("ca_cert", "client_cert", "client_key"), CERTS_FIX)
        if self.proxy_auth is None and not is_loopback(self.listen_host):
            raise ConfigError(
                f"proxy_auth is required because listen_host {self.listen_host!r} is not a "
                "loopback address (anyone who can reach it could use the tunnel): set "
                f"proxy_auth ({names(self, 'proxy_auth')}) to user:password, or set "
                "listen_host to 127.0.0.1",
                key="proxy_auth",
            )
        if self.api_url is not None and not self.api_key:
            raise ConfigError(
                f"api_key is required with api_url: set api_key ({names(self, 'api_key')}) to "
                "the API key value (`fluidity deploy` writes it into the agent's config)",
                key="api_key",
            )
        if self.socks_port is not None and self.socks_port == self.listen_port != 0:
            raise ConfigError(
                f"socks_port and listen_port are both {self.listen_port}: the SOCKS and HTTP "
                f"proxies need a port each; set socks_port ({names(self, 'socks_port')}) to "
                "another one, e.g. 1080",
                key="socks_port",
            )
        after(self, "reconnect_min_delay", "reconnect_max_delay", equal_ok=True)
        after(self, "keepalive_interval", "keepalive_timeout")
        check_tls(self, tls.client_ssl_context, "client_cert", "client_key", "ca_cert")
