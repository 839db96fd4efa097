"""Where the server may connect, and the one function that opens every upstream TCP connection.

An agent's request names any host; without a policy the server would be an open door to its
own loopback, its VPC and the cloud metadata service. So every connection goes through
`open_tcp`, which checks every address the name resolves to, connects only to allowed ones,
and checks the address it actually reached.

Errors are one tree, each carrying the HTTP status to answer the agent with::

    UpstreamError           (status, reason): other upstream failures (502 protocol, 504 read)
    ├── DnsError            502  the name did not resolve
    ├── ConnectRefused      502  nothing listens there
    ├── Unreachable         502  no route to the address, or the connect failed otherwise
    ├── ConnectTimeout      504  no connection within the connect timeout
    └── EgressDenied        403  the policy forbids the destination
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import attrs
import trio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Refused unless `allow` names them: loopback, unspecified, link-local, cloud metadata.
DEFAULT_DENY: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/8",
        "::/128",
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
    )
)


class UpstreamError(Exception):
    """The upstream side failed; `status` is what the agent's client should see."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class DnsError(UpstreamError):
    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


class ConnectRefused(UpstreamError):
    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


class Unreachable(UpstreamError):
    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


class ConnectTimeout(UpstreamError):
    def __init__(self, reason: str) -> None:
        super().__init__(504, reason)


class EgressDenied(UpstreamError):
    def __init__(self, reason: str) -> None:
        super().__init__(403, reason)


def _networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    if isinstance(cidrs, str):
        raise TypeError("give a sequence of CIDRs, not one string")
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is that IPv4 address to the kernel."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class EgressPolicy:
    """Which destination addresses the server may connect to.

    Order of rules: `deny` refuses (it is the operator's explicit word), then `allow` permits
    (overriding the built-in defaults), then `DEFAULT_DENY` refuses; anything else is allowed.
    """

    allow: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)
    deny: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)

    def allows(self, address: str | IPAddress) -> bool:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        ip = _unmapped(ip)
        if any(ip in net for net in self.deny):
            return False
        if any(ip in net for net in self.allow):
            return True
        return not any(ip in net for net in DEFAULT_DENY)


def _denied(host: str, address: str | None = None) -> EgressDenied:
    where = host if address is None or address == host else f"{host} ({address})"
    return EgressDenied(f"destination {where} is not allowed by the egress policy")


def _literal(host: str) -> IPAddress | None:
    if not (host[:1].isdigit() or ":" in host):
        return None  # a name: no address literal starts otherwise (and no exception to pay)
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


Candidate = tuple[int, int, int, Any]  # family, type, proto, sockaddr


async def _resolve(host: str, port: int) -> list[Candidate]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DnsError(f"could not resolve host {host}") from exc
    except OSError as exc:
        raise DnsError(f"could not resolve host {host}: {exc.strerror or exc}") from exc
    candidates: list[Candidate] = [(fam, kind, proto, addr) for fam, kind, proto, _, addr in infos]
    if not candidates:
        raise DnsError(f"could not resolve host {host}")
    return candidates


async def _connect(candidate: Candidate) -> trio.SocketStream:
    family, type_, proto, sockaddr = candidate
    sock = trio.socket.socket(family, type_, proto)
    try:
        await sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _connect_error(host: str, port: int, exc: OSError) -> UpstreamError:
    if isinstance(exc, ConnectionRefusedError):
        return ConnectRefused(f"connection to {host}:{port} refused")
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return Unreachable(f"{host}:{port} is unreachable ({exc.strerror})")
    return Unreachable(f"could not connect to {host}:{port} ({exc.strerror or exc})")


async def open_tcp(
    host: str, port: int, *, policy: EgressPolicy, connect_timeout: float
) -> trio.SocketStream:
    """Connect to host:port if the policy allows the addresses it resolves to.

    Denied addresses are dropped before connecting (403 if none is left); the others are
    tried in resolver order within one `connect_timeout`. The peer address of the connected
    socket is checked again, so what was checked is what was reached.
    """
    try:
        with trio.fail_after(connect_timeout):
            literal = _literal(host)
            if literal is not None and not policy.allows(literal):
                raise _denied(host)
            candidates = await _resolve(host, port)
            allowed = [c for c in candidates if policy.allows(c[3][0])]
            if not allowed:
                raise _denied(host, candidates[0][3][0])
            last: OSError | None = None
            for candidate in allowed:
                try:
                    stream = await _connect(candidate)
                except OSError as exc:
                    last = exc
                    continue
                try:
                    peer = stream.socket.getpeername()[0]
                except OSError as exc:
                    stream.socket.close()
                    last = exc
                    continue
                if peer != candidate[3][0] and not policy.allows(peer):  # else checked above
                    stream.socket.close()
                    raise _denied(host, peer)
                return stream
            assert last is not None
            raise _connect_error(host, port, last)
    except trio.TooSlowError:
        raise ConnectTimeout(
            f"connecting to {host}:{port} timed out after {connect_timeout:g} s"
        ) from None
