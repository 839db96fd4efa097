"""Configuration of the agent and the server: defaults < YAML file < environment < flags.

Every setting has one name used three ways: the YAML key ``listen_port``, the environment
variable ``FLUIDITY_LISTEN_PORT`` and the flag ``--listen-port``. The config file is given by
``--config`` or ``FLUIDITY_CONFIG``. Certificates and keys are a file path or the PEM text
itself. The loader checks everything it can before the process starts (values, files, that
each key matches its certificate), so a mistake is one clear `ConfigError`, never a traceback
from deep inside the tunnel.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import yaml

from fluidity import tls

__all__ = [
    "ENV_CONFIG",
    "ENV_PREFIX",
    "AgentConfig",
    "ConfigError",
    "ServerConfig",
    "StaticHosts",
    "click_options",
    "is_loopback",
    "load_config",
    "redacted",
]

ENV_PREFIX = "FLUIDITY_"
ENV_CONFIG = "FLUIDITY_CONFIG"

C = TypeVar("C", bound=attrs.AttrsInstance)
F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(Exception):
    """The configuration is unusable; the message names the setting and how to fix it."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        #: The setting at fault (its YAML key), when there is one.
        self.key = key


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


def _host_key(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _to_static_hosts(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> StaticHosts:
    return value if isinstance(value, StaticHosts) else StaticHosts(value)


# -- value checks (used through field metadata; raise ValueError with what is expected) -------


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("expected a port from 0 to 65535 (0 picks a free port)")
    return value


def _remote_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("expected a port from 1 to 65535")
    return value


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError("expected a number of seconds greater than 0")
    return value


def _non_negative(value: float) -> float:
    if not value >= 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _positive_int(value: int) -> int:
    if value < 1:
        raise ValueError("expected an integer of at least 1")
    return value


_MIB = 1024 * 1024


def _window(value: int) -> int:
    if not 256 * 1024 <= value <= 2**31 - 1:
        raise ValueError("expected bytes from 262144 (256 KiB, the initial window) to 2**31 - 1")
    return value


def _budget(value: int) -> int:
    if value < 0:
        raise ValueError("expected bytes, 0 or more (0: windows never grow)")
    return value


def _host(value: str) -> str:
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("expected a host name or IP address")
    return value


def _hosts(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_host(v).lower().rstrip(".") for v in values)


def _server_name(value: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", value):
        raise ValueError("expected a DNS name, the one in the server certificate")
    return value


def _pem(value: str) -> str:
    try:
        tls.load_pem(value, "value")
    except tls.PEMError as exc:
        raise ValueError(str(exc).removeprefix("value: ")) from None
    return value


def _proxy_auth(value: str) -> str:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("expected user:password with both parts non-empty")
    return value


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
    for name, address in hosts.items():
        if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", name):
            raise ValueError(f"{name!r} is not a host name")
        try:
            out[name] = str(ipaddress.ip_address(address.strip()))
        except ValueError:
            raise ValueError(f"{address!r} (for {name}) is not an IP address") from None
    return StaticHosts(out)


def _url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError("expected an http:// or https:// URL, e.g. the API stage URL")
    return value


def _name(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_./:-]{1,255}", value):
        raise ValueError("expected a name of letters, digits and _ . / : -")
    return value


def _ready_file(value: str) -> str:
    parent = Path(value).expanduser().parent
    if not parent.is_dir():
        raise ValueError(f"directory {str(parent)!r} does not exist")
    return value


_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("text", "json")
_PEM_HELP = " A file path or the PEM text itself."


def _meta(help: str, **extra: object) -> dict[str, object]:
    return {"help": help, **extra}


# -- the two configurations ----------------------------------------------------------------


@attrs.frozen
class AgentConfig:
    """Settings of the agent: the local HTTP proxy that carries connections to the server."""

    listen_host: str = attrs.field(
        default="127.0.0.1",
        metadata=_meta(
            "Address the local HTTP proxy listens on. Anything but a loopback address "
            "also requires proxy_auth.",
            check=_host,
            metavar="HOST",
        ),
    )
    listen_port: int = attrs.field(
        default=8080,
        metadata=_meta("Port of the local HTTP proxy (0 picks a free port).", check=_port),
    )
    server_host: str = attrs.field(
        default="127.0.0.1",
        metadata=_meta(
            "Address (IP or DNS name) of the server to connect to.", check=_host, metavar="HOST"
        ),
    )
    server_port: int = attrs.field(
        default=8443, metadata=_meta("Port of the server's TLS listener.", check=_remote_port)
    )
    server_name: str = attrs.field(
        default="fluidity-server",
        metadata=_meta(
            "Name verified in the server's certificate (the server's IP address changes, its "
            "name does not; `fluidity certs init --server-name` sets it).",
            check=_server_name,
            metavar="NAME",
        ),
    )
    ca_cert: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "CA certificate that signed the server certificate." + _PEM_HELP,
            check=_pem,
            secret="pem",
            metavar="PATH|PEM",
        ),
    )
    client_cert: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "Client certificate presented to the server." + _PEM_HELP,
            check=_pem,
            secret="pem",
            metavar="PATH|PEM",
        ),
    )
    client_key: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "Private key of the client certificate." + _PEM_HELP,
            check=_pem,
            secret="pem",
            metavar="PATH|PEM",
        ),
    )
    proxy_auth: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "user:password that proxy clients must send (Proxy-Authorization: Basic). "
            "Required when listen_host is not a loopback address.",
            check=_proxy_auth,
            secret="auth",
            metavar="USER:PASSWORD",
        ),
    )
    max_client_connections: int = attrs.field(
        default=512,
        metadata=_meta(
            "Most client connections open at once. At the limit a new connection closes the "
            "oldest idle keep-alive one, or gets 503 when none is idle. Lowered at start to "
            "what the open-files limit (ulimit -n) allows.",
            check=_positive_int,
        ),
    )
    client_idle_timeout: float = attrs.field(
        default=60.0,
        metadata=_meta(
            "Seconds an idle keep-alive client connection is kept open.", check=_positive
        ),
    )
    tunnel_idle_timeout: float = attrs.field(
        default=300.0,
        metadata=_meta(
            "Seconds a CONNECT tunnel may carry no bytes either way before it is closed.",
            check=_positive,
        ),
    )
    half_closed_timeout: float = attrs.field(
        default=60.0,
        metadata=_meta(
            "Seconds a CONNECT tunnel stays open without bytes once one side has ended its "
            "half (a client that closed its socket, an origin that sent EOF).",
            check=_positive,
        ),
    )
    healthz_hosts: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_meta(
            "Host header values GET /healthz answers to besides loopback ones (127.0.0.1, "
            "::1, localhost); others get 421, against DNS rebinding.",
            check=_hosts,
            metavar="HOST",
        ),
    )
    connect_timeout: float = attrs.field(
        default=10.0,
        metadata=_meta(
            "Seconds allowed to connect to the server and do the TLS handshake.", check=_positive
        ),
    )
    request_wait_timeout: float = attrs.field(
        default=30.0,
        metadata=_meta(
            "Seconds a proxied request waits for the tunnel to be up before it fails with 503.",
            check=_positive,
        ),
    )
    reconnect_min_delay: float = attrs.field(
        default=0.5,
        metadata=_meta(
            "First delay, in seconds, before reconnecting after the link drops.", check=_positive
        ),
    )
    reconnect_max_delay: float = attrs.field(
        default=30.0,
        metadata=_meta(
            "Longest delay between reconnect attempts (the delay doubles up to it).",
            check=_positive,
        ),
    )
    keepalive_interval: float = attrs.field(
        default=15.0,
        metadata=_meta("Seconds between keepalive pings on an idle link.", check=_positive),
    )
    keepalive_timeout: float = attrs.field(
        default=45.0,
        metadata=_meta(
            "Seconds without any data from the server before the link is declared dead (a "
            "third of it while requests are open).",
            check=_positive,
        ),
    )
    max_window: int = attrs.field(
        default=16 * _MIB,
        metadata=_meta(
            "Bytes a download's receive window may grow to (from 256 KiB) while the path and "
            "the client keep up; about 4x bandwidth x round trip fills a long path.",
            check=_window,
        ),
    )
    receive_budget: int = attrs.field(
        default=64 * _MIB,
        metadata=_meta(
            "Bytes the receive windows of all the link's streams may grow to together: what "
            "stalled clients can make the agent hold.",
            check=_budget,
        ),
    )
    shutdown_grace: float = attrs.field(
        default=10.0,
        metadata=_meta(
            "Seconds open connections get to finish on shutdown before they are cut.",
            check=_non_negative,
        ),
    )
    api_url: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "Base URL of the control-plane API (POST /wake, GET /status, POST /kill). When "
            "set, the agent wakes the server on start and on demand, connects to the address "
            "status reports, and kills the server on exit. Unset: no lifecycle (local use).",
            check=_url,
            metavar="URL",
        ),
    )
    api_key: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "API key sent as x-api-key to the control-plane API. Required with api_url.",
            secret="key",
            metavar="KEY",
        ),
    )
    connection_timeout: float = attrs.field(
        default=300.0,
        metadata=_meta(
            "Seconds to wait for a woken server to accept the tunnel before giving up.",
            check=_positive,
        ),
    )
    connection_retry_interval: float = attrs.field(
        default=5.0,
        metadata=_meta(
            "Seconds between status polls and tunnel attempts while the server wakes.",
            check=_positive,
        ),
    )
    kill_on_exit: bool = attrs.field(
        default=True,
        metadata=_meta(
            "Stop the server (POST /kill) when the agent exits. Turn off when others share "
            "the server."
        ),
    )
    ready_file: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "File to write JSON with the bound ports to once listening (for scripts and tests).",
            check=_ready_file,
            metavar="PATH",
        ),
    )
    log_level: str = attrs.field(
        default="info", metadata=_meta("Lowest level logged.", choices=_LOG_LEVELS)
    )
    log_format: str = attrs.field(
        default="text",
        metadata=_meta(
            "Log format: text for people, json (one object per line) for collectors.",
            choices=_LOG_FORMATS,
        ),
    )


@attrs.frozen
class ServerConfig:
    """Settings of the server: accepts agents' links and makes the real requests."""

    listen_host: str = attrs.field(
        default="0.0.0.0",
        metadata=_meta(
            "Address the TLS listener for agents binds to.", check=_host, metavar="HOST"
        ),
    )
    listen_port: int = attrs.field(
        default=8443,
        metadata=_meta("Port of the TLS listener for agents (0 picks a free port).", check=_port),
    )
    health_host: str = attrs.field(
        default="0.0.0.0",
        metadata=_meta(
            "Address of the plain-HTTP health check endpoint.", check=_host, metavar="HOST"
        ),
    )
    health_port: int = attrs.field(
        default=8081,
        metadata=_meta("Port of the health check endpoint (0 picks a free port).", check=_port),
    )
    server_cert: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "Server certificate shown to agents." + _PEM_HELP,
            check=_pem,
            secret="pem",
            metavar="PATH|PEM",
        ),
    )
    server_key: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "Private key of the server certificate." + _PEM_HELP,
            check=_pem,
            secret="pem",
            metavar="PATH|PEM",
        ),
    )
    ca_cert: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "CA certificate that agents' client certificates must be signed by." + _PEM_HELP,
            check=_pem,
            secret="pem",
            metavar="PATH|PEM",
        ),
    )
    egress_allow: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_meta(
            "CIDR blocks always allowed as destinations, overriding the default denials "
            "(loopback, unspecified, link-local, cloud metadata, and private networks: "
            "RFC 1918, 100.64.0.0/10, fc00::/7, and NAT64 addresses of any of these).",
            check=_cidrs,
            metavar="CIDR",
        ),
    )
    egress_deny: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_meta(
            "Extra CIDR blocks refused as destinations; wins over egress_allow.",
            check=_cidrs,
            metavar="CIDR",
        ),
    )
    static_hosts: StaticHosts = attrs.field(
        default=StaticHosts(),
        converter=_to_static_hosts,
        metadata=_meta(
            "Fixed name=IP address entries, looked up before DNS.",
            check=_static_hosts,
            metavar="NAME=IP",
        ),
    )
    resolver: str = attrs.field(
        default="system",
        metadata=_meta(
            "How names are resolved: system (static_hosts, then DNS) or static "
            "(static_hosts only; every other name fails).",
            choices=("system", "static"),
        ),
    )
    upstream_connect_timeout: float = attrs.field(
        default=10.0,
        metadata=_meta("Seconds allowed to connect to a destination.", check=_positive),
    )
    upstream_read_timeout: float = attrs.field(
        default=60.0,
        metadata=_meta(
            "Seconds a destination may stay silent while a response is awaited.", check=_positive
        ),
    )
    tunnel_idle_timeout: float = attrs.field(
        default=300.0,
        metadata=_meta(
            "Seconds a CONNECT tunnel or WebSocket may move nothing either way before the "
            "server closes it (an open one keeps the server awake).",
            check=_positive,
        ),
    )
    half_closed_timeout: float = attrs.field(
        default=30.0,
        metadata=_meta(
            "Seconds a CONNECT tunnel with one direction ended (the client sent EOF, say) may "
            "move nothing before the server closes it.",
            check=_positive,
        ),
    )
    handshake_timeout: float = attrs.field(
        default=10.0,
        metadata=_meta("Seconds an agent gets for the TLS and link handshakes.", check=_positive),
    )
    max_links: int = attrs.field(
        default=64,
        metadata=_meta("Most agent links open at once; more are refused.", check=_positive_int),
    )
    max_handshakes: int = attrs.field(
        default=64,
        metadata=_meta(
            "Most connections in their TLS handshake (not yet authenticated) at once; at the "
            "cap the oldest one that has sent nothing is closed to make room.",
            check=_positive_int,
        ),
    )
    max_handshakes_per_source: int = attrs.field(
        default=8,
        metadata=_meta(
            "Most connections in their TLS handshake from one IPv4 address or IPv6 /64; at "
            "the cap its oldest one that has sent nothing is closed to make room.",
            check=_positive_int,
        ),
    )
    keepalive_interval: float = attrs.field(
        default=15.0,
        metadata=_meta("Seconds between keepalive pings on an idle link.", check=_positive),
    )
    keepalive_timeout: float = attrs.field(
        default=45.0,
        metadata=_meta(
            "Seconds without any data from an agent before its link is closed (a third of it "
            "while streams are open).",
            check=_positive,
        ),
    )
    max_window: int = attrs.field(
        default=16 * _MIB,
        metadata=_meta(
            "Bytes an upload's receive window may grow to (from 256 KiB) while the path and "
            "the origin keep up.",
            check=_window,
        ),
    )
    receive_budget: int = attrs.field(
        default=64 * _MIB,
        metadata=_meta(
            "Bytes the receive windows of one link's streams may grow to together (sized for "
            "a 512 MiB task: stalled origins cannot make the server hold more).",
            check=_budget,
        ),
    )
    shutdown_grace: float = attrs.field(
        default=25.0,
        metadata=_meta(
            "Seconds in-flight requests get to finish on SIGTERM (Fargate allows 30).",
            check=_non_negative,
        ),
    )
    metrics_enabled: bool = attrs.field(
        default=False,
        metadata=_meta(
            "Emit ActiveConnections and LastActivityEpochSeconds to CloudWatch (needs AWS "
            "credentials and cloudwatch:PutMetricData)."
        ),
    )
    metrics_interval: float = attrs.field(
        default=60.0,
        metadata=_meta("Seconds between metric emissions (also one at start).", check=_positive),
    )
    metrics_namespace: str = attrs.field(
        default="Fluidity", metadata=_meta("CloudWatch namespace of the metrics.", check=_name)
    )
    service_name: str = attrs.field(
        default="fluidity",
        metadata=_meta(
            "Value of the metrics' Service dimension: the ECS service name the Sleep "
            "function watches.",
            check=_name,
        ),
    )
    aws_region: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "AWS region for CloudWatch (default: the SDK's, e.g. AWS_REGION).", check=_name
        ),
    )
    aws_endpoint_url: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "CloudWatch endpoint override (a local emulator such as moto_server in tests).",
            check=_url,
            metavar="URL",
        ),
    )
    ready_file: str | None = attrs.field(
        default=None,
        metadata=_meta(
            "File to write JSON with the bound ports to once listening (for scripts and tests).",
            check=_ready_file,
            metavar="PATH",
        ),
    )
    log_level: str = attrs.field(
        default="info", metadata=_meta("Lowest level logged.", choices=_LOG_LEVELS)
    )
    log_format: str = attrs.field(
        default="text",
        metadata=_meta(
            "Log format: text for people, json (one object per line) for collectors.",
            choices=_LOG_FORMATS,
        ),
    )


# -- describing settings --------------------------------------------------------------------


class _Kind:
    """The value types settings may have; each reads as the expectation in error messages."""

    STR = "a string"
    INT = "an integer"
    FLOAT = "a number"
    BOOL = "a boolean (true/false)"
    LIST = "a list of strings (comma-separated in the environment)"
    #: Only `StaticHosts` so far: names are compared as host names.
    MAP = "a mapping of names to strings (name=value,name2=value2 in the environment)"


@attrs.frozen
class _Setting:
    name: str
    kind: str
    optional: bool
    default: object
    help: str
    check: Callable[[Any], Any] | None
    choices: tuple[str, ...] | None
    secret: str | None
    metavar: str | None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def names(self) -> str:
        """The three ways to set it, for error messages."""
        return f"YAML key {self.name}, env {self.env}, flag {self.flag}"


_SETTINGS: dict[type[Any], dict[str, _Setting]] = {}


def _settings(cls: type[Any]) -> dict[str, _Setting]:
    """The settings of a config class, in field order (computed once per class)."""
    if cls not in _SETTINGS:
        _SETTINGS[cls] = _describe(cls)
    return _SETTINGS[cls]


def _describe(cls: type[Any]) -> dict[str, _Setting]:
    hints = typing.get_type_hints(cls)
    out = {}
    for field in attrs.fields(cls):
        hint = hints[field.name]
        optional = False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{field.name}: unsupported type {hint}")
            hint = args[0]
        origin = typing.get_origin(hint) or hint
        kind = {str: _Kind.STR, int: _Kind.INT, float: _Kind.FLOAT, bool: _Kind.BOOL}.get(hint)
        if kind is None and origin in (tuple, list):
            kind = _Kind.LIST
        elif kind is None and isinstance(origin, type) and issubclass(origin, Mapping):
            kind = _Kind.MAP
        if kind is None:
            raise TypeError(f"{cls.__name__}.{field.name}: unsupported type {hint}")
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text")
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        out[field.name] = _Setting(
            name=field.name,
            kind=kind,
            optional=optional,
            default=default,
            help=str(meta["help"]),
            check=meta.get("check"),
            choices=meta.get("choices"),
            secret=meta.get("secret"),
            metavar=meta.get("metavar"),
        )
    return out


def _label(cls: type[Any]) -> str:
    return cls.__name__.removesuffix("Config").lower() or cls.__name__


# -- loading --------------------------------------------------------------------------------


def load_config(
    cls: type[C],
    *,
    path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, object],
) -> C:
    """Build `cls` from defaults < YAML file < ``FLUIDITY_*`` environment < flags.

    The file is `path`, else ``$FLUIDITY_CONFIG``, else none. A flag whose value is None was
    not given. Every value is checked; any problem raises `ConfigError`.
    """
    settings = _settings(cls)
    flags = dict(flags)
    flag_path = flags.pop("config", None)
    if path is None and isinstance(flag_path, str):
        path = flag_path
    if path is None:
        path = env.get(ENV_CONFIG) or None
    values: dict[str, object] = {}
    if path is not None:
        for key, raw in _read_yaml(cls, path).items():
            values[key] = _coerce(settings[key], raw, f"in config file {path}")
    for var, raw in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG:
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in settings:
            if _belongs_to_other(cls, key):
                continue  # one shell may start both processes: each takes its own variables
            raise _unknown(cls, key, f"environment variable {var}", env=True)
        values[key] = _coerce(settings[key], raw, f"in environment variable {var}")
    for key, raw in flags.items():
        if key not in settings:
            raise ConfigError(f"unknown flag {key!r} for the {_label(cls)}", key=key)
        if raw is None:
            continue
        values[key] = _coerce(settings[key], raw, f"from flag {settings[key].flag}")
    config = cls(**values)
    check = _CHECKS.get(cls)
    if check is not None:
        check(config, settings)
    return config


def _read_yaml(cls: type[Any], path: str) -> dict[str, object]:
    where = f"config file {path}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{where} does not exist; fix the path given by --config or {ENV_CONFIG}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {where}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where} must be a mapping of settings (key: value lines), not {type(data).__name__}"
        )
    settings = _settings(cls)
    for key in data:
        if not isinstance(key, str) or key not in settings:
            raise _unknown(cls, str(key), where, env=False)
    return data


def _belongs_to_other(cls: type[Any], key: str) -> bool:
    other = _OTHER.get(cls)
    return other is not None and key in _settings(other)


def _unknown(cls: type[Any], key: str, where: str, *, env: bool) -> ConfigError:
    settings = _settings(cls)
    shown = ENV_PREFIX + key.upper() if env else f"key `{key}`"
    location = "" if env else f" in {where}"
    other = _OTHER.get(cls)
    if other is not None and _belongs_to_other(cls, key):
        return ConfigError(
            f"{shown}{location} is a setting of the {_label(other)}, not of the {_label(cls)}; "
            f"remove it from the {_label(cls)}'s configuration",
            key=key,
        )
    message = f"unknown setting {shown}{location}"
    close = difflib.get_close_matches(key, settings, n=1, cutoff=0.6)
    if close:
        better = ENV_PREFIX + close[0].upper() if env else f"`{close[0]}`"
        message += f"; did you mean {better}?"
    else:
        message += f"; the {_label(cls)} settings are listed by --help and docs/configuration.md"
    return ConfigError(message, key=key)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(setting: _Setting, raw: object, source: str) -> object:
    """Turn a raw value (typed from YAML or flags, a string from the environment) into the
    setting's type, then run its checks."""
    try:
        value = _parse(setting, raw)
        if value is None:
            return None
        if setting.choices is not None and value not in setting.choices:
            raise ValueError(f"expected one of {', '.join(setting.choices)}")
        if setting.check is not None:
            value = setting.check(value)
    except ValueError as exc:
        shown = "" if setting.secret or raw is None else f", got {_short(raw)}"
        raise ConfigError(
            f"invalid {setting.name} {source}: {exc}{shown}. "
            f"Give it a valid value ({setting.names})",
            key=setting.name,
        ) from None
    return value


def _parse(setting: _Setting, raw: object) -> object:
    kind = setting.kind
    if isinstance(raw, str):
        raw = raw.strip()
        if raw == "" and kind not in (_Kind.LIST, _Kind.MAP):
            raw = None
    if raw is None:
        if setting.optional:
            return None
        raise ValueError(f"must not be empty; expected {kind}")
    if kind == _Kind.STR:
        if not isinstance(raw, str):
            raise ValueError(f"expected {kind} (quote it in YAML)")
        return raw
    if kind == _Kind.BOOL:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"expected {kind}")
    if kind == _Kind.INT:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw):
            return int(raw)
        raise ValueError(f"expected {kind}")
    if kind == _Kind.FLOAT:
        number: float
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            number = float(raw)
        elif isinstance(raw, str):
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"expected {kind}") from None
        else:
            raise ValueError(f"expected {kind}")
        if not math.isfinite(number):
            raise ValueError(f"expected a finite {kind.removeprefix('a ')}")
        return number
    if kind == _Kind.LIST:
        items = _split(raw) if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected {kind}")
        return tuple(part for item in items for part in _split(item))
    # _Kind.MAP: a mapping, "a=b,c=d", or a list of "a=b" (repeated flags)
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, str | list | tuple):
        texts = [raw] if isinstance(raw, str) else list(raw)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"expected {kind}")
        pairs = []
        for entry in (e for t in texts for e in _split(t)):
            name, sep, value = entry.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ValueError(f"entry {entry!r} is not name=value")
            pairs.append((name.strip(), value.strip()))
    else:
        raise ValueError(f"expected {kind}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
        raise ValueError(f"expected {kind}")
    names = [_host_key(k) for k, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{', '.join(dupes)} given more than once")
    return StaticHosts(pairs)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- checks across settings ------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _require(config: Any, settings: dict[str, _Setting], names: Iterable[str], fix: str) -> None:
    for name in names:
        if getattr(config, name) is None:
            s = settings[name]
            raise ConfigError(
                f"{name} is required ({s.names}): give a PEM file path or the PEM text. {fix}",
                key=name,
            )


def _after(
    config: Any, settings: dict[str, _Setting], low: str, high: str, *, equal_ok: bool = False
) -> None:
    """Demand `high` > `low` (or >= with `equal_ok`)."""
    lo, hi = getattr(config, low), getattr(config, high)
    if hi < lo or (hi == lo and not equal_ok):
        s = settings[high]
        relation = "at least" if equal_ok else "greater than"
        raise ConfigError(
            f"{high} must be {relation} {low}, but it is {hi} and {low} is {lo}; "
            f"raise {high} or lower {low} ({s.names})",
            key=high,
        )


def _check_tls(
    build: Callable[[str, str, str], object],
    settings: dict[str, _Setting],
    cert: tuple[str, str],
    key: tuple[str, str],
    ca: tuple[str, str],
) -> None:
    try:
        build(cert[1], key[1], ca[1])
    except tls.PEMError as exc:
        names = "; ".join(settings[n].names for n in (cert[0], key[0], ca[0]))
        raise ConfigError(
            f"{cert[0]}, {key[0]} and {ca[0]} cannot be used together: {exc}. Check that each "
            f"is the right certificate and that {key[0]} belongs to {cert[0]}. Settings: {names}",
            key=cert[0],
        ) from None


_CERTS_FIX = "Create the certificates with `fluidity certs init --dir certs`."


def _check_agent(config: AgentConfig, settings: dict[str, _Setting]) -> None:
    _require(config, settings, ("ca_cert", "client_cert", "client_key"), _CERTS_FIX)
    if config.proxy_auth is None and not is_loopback(config.listen_host):
        raise ConfigError(
            f"proxy_auth is required because listen_host {config.listen_host!r} is not a "
            "loopback address (anyone who can reach it could use the tunnel): set "
            f"proxy_auth ({settings['proxy_auth'].names}) to user:password, or set listen_host "
            "to 127.0.0.1",
            key="proxy_auth",
        )
    if config.api_url is not None and not config.api_key:
        raise ConfigError(
            f"api_key is required with api_url: set api_key ({settings['api_key'].names}) to "
            "the API key value (`fluidity deploy` writes it into the agent's config)",
            key="api_key",
        )
    _after(config, settings, "reconnect_min_delay", "reconnect_max_delay", equal_ok=True)
    _after(config, settings, "keepalive_interval", "keepalive_timeout")
    assert config.client_cert is not None
    assert config.client_key is not None
    assert config.ca_cert is not None
    _check_tls(
        tls.client_ssl_context,
        settings,
        ("client_cert", config.client_cert),
        ("client_key", config.client_key),
        ("ca_cert", config.ca_cert),
    )


def _check_server(config: ServerConfig, settings: dict[str, _Setting]) -> None:
    _require(config, settings, ("server_cert", "server_key", "ca_cert"), _CERTS_FIX)
    _after(config, settings, "keepalive_interval", "keepalive_timeout")
    if config.listen_port != 0 and config.listen_port == config.health_port:
        raise ConfigError(
            f"health_port and listen_port are both {config.listen_port}; give the health "
            f"check its own port ({settings['health_port'].names})",
            key="health_port",
        )
    assert config.server_cert is not None
    assert config.server_key is not None
    assert config.ca_cert is not None
    _check_tls(
        tls.server_ssl_context,
        settings,
        ("server_cert", config.server_cert),
        ("server_key", config.server_key),
        ("ca_cert", config.ca_cert),
    )


_CHECKS: dict[type[Any], Callable[[Any, dict[str, _Setting]], None]] = {
    AgentConfig: _check_agent,
    ServerConfig: _check_server,
}
_OTHER: dict[type[Any], type[Any]] = {AgentConfig: ServerConfig, ServerConfig: AgentConfig}


# -- flags ----------------------------------------------------------------------------------


def click_options(cls: type[Any]) -> Callable[[F], F]:
    """Add ``--config`` and one option per setting of `cls` to a click command.

    Options default to None ("not given") so that only flags actually passed override the
    file and the environment; the command passes them on as ``load_config(flags=...)``.
    """
    settings = _settings(cls)

    def decorate(func: F) -> F:
        for s in reversed(list(settings.values())):
            func = _option(s)(func)
        func = click.option(
            "--config",
            type=click.Path(dir_okay=False),
            default=None,
            metavar="PATH",
            help=f"YAML config file (settings as keys). [env: {ENV_CONFIG}]",
        )(func)
        return func

    return decorate


def _option(s: _Setting) -> Callable[[F], F]:
    default = "required" if s.default is None and s.secret == "pem" else f"default: {_show(s)}"
    help_text = f"{s.help} [{default}; env: {s.env}]"
    if s.kind == _Kind.BOOL:
        no = "--no-" + s.flag.removeprefix("--")
        return click.option(f"{s.flag}/{no}", s.name, default=None, help=help_text)
    if s.kind in (_Kind.LIST, _Kind.MAP):
        return click.option(
            s.flag,
            s.name,
            multiple=True,
            default=None,
            metavar=s.metavar,
            callback=_none_if_empty,
            help=f"{s.help} Repeat the flag or separate values with commas. "
            f"[{default}; env: {s.env}]",
        )
    click_type: Any = click.STRING
    if s.choices is not None:
        click_type = click.Choice(s.choices)
    elif s.kind == _Kind.INT:
        click_type = click.INT
    elif s.kind == _Kind.FLOAT:
        click_type = click.FLOAT
    return click.option(
        s.flag, s.name, type=click_type, default=None, metavar=s.metavar, help=help_text
    )


def _none_if_empty(ctx: click.Context, param: click.Parameter, value: object) -> object:
    return value or None


def _show(s: _Setting) -> str:
    value = s.default
    if value is None:
        return "none"
    if isinstance(value, tuple | Mapping) and not value:
        return "none"
    return str(value)


# -- logging --------------------------------------------------------------------------------


def redacted(config: attrs.AttrsInstance) -> dict[str, object]:
    """The config as a plain dict safe to log: PEM text and the proxy password are masked.

    File paths stay visible (they are not secret and help debugging).
    """
    settings = _settings(type(config))
    out: dict[str, object] = {}
    for name, s in settings.items():
        value = getattr(config, name)
        if value is not None and s.secret == "pem":
            if "-----BEGIN " in value:
                value = f"<PEM text, {len(value)} characters>"
        elif value is not None and s.secret == "auth":
            user, _, _ = value.partition(":")
            value = f"{user}:***"
        elif value is not None and s.secret:
            value = "***"
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out
