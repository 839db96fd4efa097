"""Settings of the server, and the checks across them.

How settings are loaded, layered and reported is `fluidity.settings`; the reference in
docs/configuration.md is generated from these fields (a test keeps the two equal).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping

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
    require,
    resource_name,
    setting,
    shared,
    url,
    window,
)

__all__ = ["ServerConfig", "StaticHosts"]


class StaticHosts(Mapping[str, str]):
    """An immutable, hashable ``name -> IP address`` table.

    Names are case-insensitive and a trailing dot is ignored, both when stored and when looked
    up, so ``hosts.get("Example.COM.")`` finds ``example.com``.
    """

    __slots__ = ("_map",)

    def __init__(self, entries: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        self._map: dict[str, str] = {_host_key(k): v for k, v in items}

    def __getitem__(self, name: str) -> str:
        return self._map[_host_key(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _host_key(name) in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __hash__(self) -> int:
        return hash(frozenset(self._map.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"StaticHosts({self._map!r})"


def _host_key(text: str) -> str:
    return text.strip().lower().rstrip(".")


def _to_static_hosts(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> StaticHosts:
    return value if isinstance(value, StaticHosts) else StaticHosts(value)


def _cidrs(values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for text in values:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a CIDR block; expected e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8"
            ) from None
        if str(net.network_address) != text.split("/")[0] and "/" in text:
            raise ValueError(f"{text!r} has host bits set; did you mean {net}?")
        out.append(str(net))
    return tuple(out)


def _static_hosts(hosts: StaticHosts) -> StaticHosts:
    out = {}
    for key, address in hosts.items():
        if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", key):
            raise ValueError(f"{key!r} is not a host name")
        try:
            out[key] = str(ipaddress.ip_address(address.strip()))
        except ValueError:
            raise ValueError(f"{address!r} (for {key}) is not an IP address") from None
    return StaticHosts(out)


@attrs.frozen
class ServerConfig:
    """Settings of the server: accepts agents' links and makes the real requests."""

    listen_host: str = setting(
        "0.0.0.0", "Address the TLS listener for agents binds to.", check=host, metavar="HOST"
    )
    listen_port: int = setting(
        8443, "Port of the TLS listener for agents (0 picks a free port).", check=port
    )
    health_host: str = setting(
        "0.0.0.0", "Address of the plain-HTTP health check endpoint.", check=host, metavar="HOST"
    )
    health_port: int = setting(
        8081, "Port of the health check endpoint (0 picks a free port).", check=port
    )
    server_cert: str | None = setting(
        None,
        "Server certificate shown to agents." + PEM_HELP,
        check=pem,
        secret="pem",
        metavar="PATH|PEM",
    )
    server_key: str | None = setting(
        None,
        "Private key of the server certificate." + PEM_HELP,
        check=pem,
        secret="pem",
        metavar="PATH|PEM",
    )
    ca_cert: str | None = setting(
        None,
        "CA certificate that agents' client certificates must be signed by." + PEM_HELP,
        check=pem,
        secret="pem",
        metavar="PATH|PEM",
    )
    egress_allow: tuple[str, ...] = setting(
        (),
        "CIDR blocks always allowed as destinations, overriding the default denials "
        "(loopback, unspecified, link-local, cloud metadata, and private networks: "
        "RFC 1918, `100.64.0.0/10`, `fc00::/7`, and NAT64, 6to4 and Teredo addresses of any "
        "of these).",
        check=_cidrs,
        metavar="CIDR",
    )
    egress_deny: tuple[str, ...] = setting(
        (),
        "Extra CIDR blocks refused as destinations; wins over `egress_allow`. The Fargate "
        "template sets it to the VPC's CIDR.",
        check=_cidrs,
        metavar="CIDR",
    )
    static_hosts: StaticHosts = setting(
        StaticHosts(),
        "Fixed name=IP address entries, looked up before DNS.",
        check=_static_hosts,
        metavar="NAME=IP",
        converter=_to_static_hosts,
    )
    resolver: str = setting(
        "system",
        "How names are resolved: system (static_hosts, then DNS) or static "
        "(static_hosts only; every other name fails).",
        choices=("system", "static"),
    )
    upstream_connect_timeout: float = setting(
        10.0, "Seconds allowed to connect to a destination.", check=positive
    )
    upstream_read_timeout: float = setting(
        60.0, "Seconds a destination may stay silent while a response is awaited.", check=positive
    )
    tunnel_idle_timeout: float = setting(
        300.0,
        "Seconds a CONNECT tunnel or WebSocket may move nothing either way before the "
        "server closes it (an open one keeps the server awake). WebSocket pings do not count. "
        "A closed tunnel's reason names this setting; raise it for long-quiet sessions (SSH "
        "without keepalives).",
        check=positive,
    )
    half_closed_timeout: float = setting(
        30.0,
        "Seconds a CONNECT tunnel with one direction ended (the client sent EOF, say) may "
        "move nothing before the server closes it.",
        check=positive,
    )
    handshake_timeout: float = setting(
        10.0, "Seconds an agent gets for the TLS and link handshakes.", check=positive
    )
    max_links: int = setting(
        64, "Most agent links open at once; more are refused.", check=positive_int
    )
    max_handshakes: int = setting(
        64,
        "Most connections in their TLS handshake (not yet authenticated) at once; at the "
        "cap the oldest one that has sent nothing is closed to make room (the warning names "
        "the setting).",
        check=positive_int,
    )
    max_handshakes_per_source: int = setting(
        8,
        "Most connections in their TLS handshake from one IPv4 address or IPv6 /64; at "
        "the cap its oldest one that has sent nothing is closed to make room. Raise it if many "
        "agents share one address (behind a NAT) and connect at once.",
        check=positive_int,
    )
    keepalive_interval: float = shared("keepalive_interval")
    keepalive_timeout: float = setting(
        45.0,
        "Seconds without any data from an agent before its link is closed (a third of it "
        "while streams are open).",
        check=positive,
    )
    max_window: int = setting(
        16 * MIB,
        "Bytes an upload's receive window may grow to (from 256 KiB) while the path and "
        "the origin keep up.",
        check=window,
    )
    receive_budget: int = setting(
        64 * MIB,
        "Bytes the receive windows of one link's streams may grow to together (sized for "
        "a 512 MiB task: stalled origins cannot make the server hold more).",
        check=budget,
    )
    shutdown_grace: float = setting(
        25.0,
        "Seconds in-flight requests get to finish on SIGTERM (Fargate allows 30).",
        check=non_negative,
    )
    metrics_enabled: bool = setting(
        False,
        "Emit `ActiveConnections` and `LastActivityEpochSeconds` to CloudWatch (needs AWS "
        "credentials and `cloudwatch:PutMetricData`).",
    )
    metrics_interval: float = setting(
        60.0, "Seconds between metric emissions (also one at start).", check=positive
    )
    metrics_namespace: str = setting(
        "Fluidity", "CloudWatch namespace of the metrics.", check=resource_name
    )
    service_name: str = setting(
        "fluidity",
        "Value of the metrics' `Service` dimension: the ECS service name the Sleep "
        "function watches.",
        check=resource_name,
    )
    aws_region: str | None = setting(
        None,
        "AWS region for CloudWatch (default: the SDK's, e.g. `AWS_REGION`).",
        check=resource_name,
    )
    aws_endpoint_url: str | None = setting(
        None,
        "CloudWatch endpoint override (a local emulator such as `moto_server` in tests).",
        check=url,
        metavar="URL",
    )
    ready_file: str | None = shared("ready_file")
    log_level: str = shared("log_level")
    log_format: str = shared("log_format")
    access_log: bool = setting(
        False,
        "Log a line at info per request or tunnel served (host, method, status, bytes each "
        "way, duration, stream id; never the path, query string or credentials).",
    )

    def check(self) -> None:
        """Checks across settings."""
        require(self, ("server_cert", "server_key", "ca_cert"), CERTS_FIX)
        after(self, "keepalive_interval", "keepalive_timeout")
        if self.listen_port != 0 and self.listen_port == self.health_port:
            raise ConfigError(
                f"health_port and listen_port are both {self.listen_port}; give the health "
                f"check its own port ({names(self, 'health_port')})",
                key="health_port",
            )
        check_tls(self, tls.server_ssl_context, "server_cert", "server_key", "ca_cert")
