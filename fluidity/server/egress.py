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

#: Refused unless `allow` names them: this host, link-local (cloud metadata included), and every
#: private network the server might sit in or next to. A proxy on a VPC must not become a door
#: into it: RFC 1918, carrier-grade NAT (RFC 6598, used inside some clouds), IPv6 unique local
#: (RFC 4193, AWS's fd00:ec2::/32 metadata and DNS addresses too). Also the ranges no public
#: origin lives in (documentation, benchmarking, reserved, multicast): a request for one is a
#: mistake or a probe, and a test that uses one to be refused must be refused before connecting.
DEFAULT_DENY: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/8",
        "::/128",
        "169.254.0.0/16",
        "fe80::/10",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
        "192.0.2.0/24",  # TEST-NET-1..3 (RFC 5737)
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",  # IPv6 documentation (RFC 3849)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "240.0.0.0/4",  # reserved, and the broadcast address
        "224.0.0.0/4",  # multicast
        "ff00::/8",
    )
)

#: NAT64 (RFC 6052): a translator connects to the IPv4 address inside, so that is what is
#: checked. The well-known prefix holds it in the last 32 bits.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
#: The local-use prefix (RFC 8215) is the network's own: its translator may use any RFC 6052
#: layout (/48, /56, /64 or /96), so every layout the address fits is checked.
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
#: RFC 6052 layouts possible under a /48: (IPv4 bit ranges, first suffix bit that must be 0).
#: Bits count from the address's most significant; bits 64-71 (the "u" octet) are always 0.
_NAT64_LAYOUTS: tuple[tuple[tuple[tuple[int, int], ...], int], ...] = (
    (((48, 16), (72, 16)), 88),
    (((56, 8), (72, 24)), 96),
    (((72, 32),), 104),
    (((96, 32),), 128),
)


def _bits(value: int, start: int, length: int) -> int:
    return (value >> (128 - start - length)) & ((1 << length) - 1)


def _nat64_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses a NAT64 address may stand for (None: not a NAT64 address; empty:
    one that fits no layout)."""
    if address in NAT64_WELL_KNOWN:
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address not in NAT64_LOCAL:
        return None
    value = int(address)
    if _bits(value, 64, 8):
        return ()
    found = []
    for pieces, suffix in _NAT64_LAYOUTS:
        if suffix < 128 and _bits(value, suffix, 128 - suffix):
            continue
        v4 = 0
        for start, length in pieces:
            v4 = (v4 << length) | _bits(value, start, length)
        found.append(ipaddress.IPv4Address(v4))
    return tuple(found)


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


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 address leads to (None: an address of its own; empty: one
    that cannot be told). NAT64 connects to the address inside; 6to4 (2002::/16, RFC 3056)
    sends to the IPv4 gateway it names, Teredo (2001::/32, RFC 4380) to its server and its
    client's public address: each of those is what the connection reaches."""
    if (nat64 := _nat64_ipv4(address)) is not None:
        return nat64
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo
    return None


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is that IPv4 address to the kernel."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class EgressPolicy:
    """Which destination addresses the server may connect to.

    Order of rules: `deny` refuses (it is the operator's explicit word), then `allow` permits
    (overriding the built-in defaults), then a NAT64, 6to4 or Teredo address is judged by the
    IPv4 addresses inside it (all the rules again), then `DEFAULT_DENY` refuses; anything else
    is allowed.
    """

    allow: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)
    deny: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)

    def allows(self, address: str | IPAddress) -> bool:
        return self.refusal(address) is None

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why `address` is refused, naming the setting that would change it; None: allowed."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        ip = _unmapped(ip)
        if any(ip in net for net in self.deny):
            return "egress_deny lists it"
        if any(ip in net for net in self.allow):
            return None
        if isinstance(ip, ipaddress.IPv6Address) and (inside := _embedded_ipv4(ip)) is not None:
            if not inside:
                return _DEFAULT_REFUSAL
            for v4 in inside:
                if (why := self.refusal(v4)) is not None:
                    return why
            return None
        if any(ip in net for net in DEFAULT_DENY):
            return _DEFAULT_REFUSAL
        return None


_DEFAULT_REFUSAL = (
    "local, link-local and private addresses are refused unless egress_allow lists them"
)


def _denied(host: str, why: str | None, address: str | None = None) -> EgressDenied:
    where = host if address is None or address == host else f"{host} ({address})"
    why = why or _DEFAULT_REFUSAL
    ip = address or host
    if why == _DEFAULT_REFUSAL:
        block = f"{ip}/{32 if ':' not in ip else 128}"
        fix = f"to reach it, add {block} to the server's egress_allow (FLUIDITY_EGRESS_ALLOW)"
    else:
        fix = "to reach it, remove it from the server's egress_deny (FLUIDITY_EGRESS_DENY)"
    return EgressDenied(f"destination {where} is not allowed by the egress policy ({why}); {fix}")


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
            if literal is not None and (why := policy.refusal(literal)) is not None:
                raise _denied(host, why)
            candidates = await _resolve(host, port)
            allowed = [c for c in candidates if policy.allows(c[3][0])]
            if not allowed:
                first = candidates[0][3][0]
                raise _denied(host, policy.refusal(first), first)
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
                if peer != candidate[3][0] and (why := policy.refusal(peer)) is not None:
                    stream.socket.close()  # (else checked above)
                    raise _denied(host, why, peer)
                return stream
            assert last is not None
            raise _connect_error(host, port, last)
    except trio.TooSlowError:
        raise ConnectTimeout(
            f"connecting to {host}:{port} timed out after {connect_timeout:g} s"
        ) from None
