"""HTTP facts both processes need: absolute URLs and which headers belong to one hop.

The agent parses its clients' absolute-form targets, the server the WebSocket URLs the agent
sends; both through `parse_absolute_url`, each with its own errors. The server's plain HTTP
requests keep their own byte-level split (`server/upstream_http.py`), which sends the target
exactly as written.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

__all__ = [
    "DEFAULT_PORTS",
    "ERROR_HEADER",
    "HOP_BY_HOP",
    "REASON_HEADER",
    "WEBSOCKET_HANDSHAKE",
    "AbsoluteURL",
    "header_text",
    "parse_absolute_url",
    "upstream_reason",
]

#: On every answer Fluidity makes itself (not the origin): a stable token saying why, for
#: scripts (`tunnel-unavailable`, `egress-denied`, ...; docs/data-plane.md lists them).
REASON_HEADER = b"x-fluidity-reason"
#: Beside it on failures: the same words as the body, for clients that show only headers
#: (curl shows no body for a failed CONNECT).
ERROR_HEADER = b"x-fluidity-error"

_UPSTREAM_REASONS = {400: b"bad-request", 403: b"egress-denied", 504: b"origin-timeout"}


def upstream_reason(status: int) -> bytes:
    """The reason token of the server's failure to reach an origin, by its status."""
    return _UPSTREAM_REASONS.get(status, b"origin-failed")


def header_text(text: str) -> bytes:
    """`text` as a header value: one line of ASCII, at most 512 bytes."""
    return " ".join(text.split()).encode("ascii", "replace")[:512]


#: Always connection-specific, whatever the Connection header says (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
#: The WebSocket handshake is redone end to end by the server; these belong to one hop.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
    }
)

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


@attrs.frozen
class AbsoluteURL:
    """An absolute URL taken apart; the caller decides which schemes and parts it accepts."""

    scheme: str
    #: Lower case; an IPv6 address without brackets; empty if the URL has none.
    host: str
    #: The scheme's default when the URL gives none.
    port: int
    #: Path and query, "/" for an empty path.
    resource: str
    credentials: bool
    fragment: bool

    @property
    def secure(self) -> bool:
        return self.scheme in ("https", "wss")

    @property
    def authority(self) -> str:
        """host[:port] as a Host header says it: IPv6 in brackets, no default port."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != DEFAULT_PORTS.get(self.scheme):
            netloc += f":{self.port}"
        return netloc


def parse_absolute_url(text: str) -> AbsoluteURL:
    """Take `text` apart; ValueError if it cannot be (a bad port, a bad IPv6 literal)."""
    parts = urlsplit(text)
    port = parts.port
    return AbsoluteURL(
        scheme=parts.scheme,
        host=parts.hostname or "",
        port=port if port is not None else DEFAULT_PORTS.get(parts.scheme, 0),
        resource=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        credentials=parts.username is not None or parts.password is not None,
        fragment=bool(parts.fragment),
    )
