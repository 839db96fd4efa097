"""The trio shell around the protocol: links (the multiplexer) and their streams."""

from .errors import LinkClosed, StreamReset, TunnelError
from .link import Link, LinkConfig, LinkStatistics, open_link, serve_link
from .stream import Reply, TunnelStream

__all__ = [
    "Link",
    "LinkClosed",
    "LinkConfig",
    "LinkStatistics",
    "Reply",
    "StreamReset",
    "TunnelError",
    "TunnelStream",
    "open_link",
    "serve_link",
]
