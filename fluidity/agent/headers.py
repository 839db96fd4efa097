"""Proxy header rules (RFC 9110 section 7.6, RFC 9112 section 3.2.2), sans-I/O.

Pure functions over h11-style header lists: which headers a proxy must drop, the Via it adds,
and the request shapes it refuses because two parsers could read them differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from fluidity.httputil import HOP_BY_HOP, WEBSOCKET_HANDSHAKE, parse_absolute_url

HeaderList = list[tuple[bytes, bytes]]

VIA = b"1.1 fluidity"
#: The longest DNS name (RFC 1035); an IPv6 literal is shorter.
MAX_HOST_LENGTH = 253

#: Handled by the agent itself: it answers 100 Continue to the client.
AGENT_HANDLED = frozenset({b"expect"})


class BadRequest(Exception):
    """The request must be refused with 400; the message says why (safe to show)."""


@attrs.frozen
class Target:
    """Where an absolute-form request goes."""

    scheme: str
    host: str
    port: int
    #: The URL to send upstream (absolute; the server rewrites it to origin-form).
    url: bytes
    #: host[:port] as the Host header gives it (the port only when not the default).
    authority: bytes


def _tokens(values: Iterable[bytes]) -> set[bytes]:
    return {t.strip().lower() for v in values for t in v.split(b",") if t.strip()}


def get(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of header `name` (lower-case), in order."""
    return [v for n, v in headers if n.lower() == name]


def connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    return _tokens(get(headers, b"connection"))


def is_websocket_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return b"upgrade" in connection_tokens(headers) and b"websocket" in _tokens(
        get(headers, b"upgrade")
    )


def end_to_end(
    headers: Sequence[tuple[bytes, bytes]], *, extra: frozenset[bytes] = frozenset()
) -> HeaderList:
    """Drop hop-by-hop headers, those named in Connection, and `extra`; keep order and repeats."""
    drop = HOP_BY_HOP | connection_tokens(headers) | extra
    return [(n, v) for n, v in headers if n.lower() not in drop]


def add_via(headers: HeaderList) -> HeaderList:
    """Append our Via entry (to an existing Via header, if any)."""
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"via":
            headers[i] = (name, value + b", " + VIA)
            return headers
    headers.append((b"via", VIA))
    return headers


def check_framing(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Refuse the request-smuggling shapes h11 itself would accept (it lets TE beat CL)."""
    if get(headers, b"transfer-encoding") and get(headers, b"content-length"):
        raise BadRequest("both Content-Length and Transfer-Encoding are present")


def has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """True when a request with these (h11-validated) headers carries a body."""
    if get(headers, b"transfer-encoding"):
        return True
    lengths = get(headers, b"content-length")
    return bool(lengths) and int(lengths[0]) > 0


def parse_target(target: bytes, *, websocket: bool = False) -> Target:
    """Parse an absolute-form request target (http, https; ws/wss for WebSocket upgrades)."""
    try:
        url = parse_absolute_url(target.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the request target is not a valid absolute URL") from None
    schemes = {"http", "https", "ws", "wss"} if websocket else {"http", "https"}
    if url.scheme not in schemes:
        expected = ", ".join(sorted(schemes))
        raise BadRequest(f"unsupported scheme in the request target (expected {expected})")
    if not url.host:
        raise BadRequest("the request target has no host")
    if url.credentials:
        raise BadRequest("credentials in the request URL are not forwarded")
    if url.fragment:
        raise BadRequest("a request target may not carry a fragment")
    scheme = url.scheme
    if websocket and scheme in {"http", "https"}:
        scheme = "ws" if scheme == "http" else "wss"
    authority = url.authority
    url_bytes = f"{scheme}://{authority}{url.resource}".encode("ascii")
    return Target(scheme, url.host, url.port, url_bytes, authority.encode("ascii"))


def host_name(host: bytes) -> str | None:
    """The name or address in a Host header value, lower case, without port or final dot;
    None if it is not a plausible host."""
    try:
        text = host.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        name, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name or None
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return None
    return name.rstrip(".") or None


def host_port(host: bytes, default: int = 80) -> int:
    """The port in a Host header value that `host_name` accepted; `default` when it has none."""
    rest = host.rpartition(b"]")[2] if host.startswith(b"[") else host
    _, sep, port = rest.rpartition(b":")
    return int(port) if sep and port.isdigit() else default


def parse_authority(target: bytes) -> tuple[str, int]:
    """Parse a CONNECT target `host:port` (IPv6 in brackets)."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the CONNECT target is not ASCII") from None
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise BadRequest("CONNECT needs a host:port target")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise BadRequest("an IPv6 CONNECT host must be in brackets")
    if len(host) > MAX_HOST_LENGTH:
        raise BadRequest(f"the CONNECT host is longer than a host name can be ({MAX_HOST_LENGTH})")
    port = int(port_text)
    if not 0 < port < 65536:
        raise BadRequest("the CONNECT port is out of range")
    return host.lower(), port


def request_headers(headers: Sequence[tuple[bytes, bytes]], target: Target) -> HeaderList:
    """The headers to send upstream for an ordinary request: end-to-end ones, Host, Via."""
    kept = end_to_end(headers, extra=AGENT_HANDLED | {b"host"})
    kept.insert(0, (b"host", target.authority))
    return add_via(kept)


def websocket_headers(headers: Sequence[tuple[bytes, bytes]], target: Target) -> HeaderList:
    """Headers for the upstream WebSocket handshake (the server adds its own handshake)."""
    kept = end_to_end(headers, extra=AGENT_HANDLED | WEBSOCKET_HANDSHAKE | {b"host"})
    return add_via(kept)


def response_headers(headers: Sequence[tuple[bytes, bytes]]) -> HeaderList:
    """The headers to give the client: end-to-end ones plus Via (h11 redoes the framing)."""
    return add_via(end_to_end(headers))


def subprotocols(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, ...]:
    values = get(headers, b"sec-websocket-protocol")
    return tuple(
        t.strip().decode("ascii", "replace") for v in values for t in v.split(b",") if t.strip()
    )
