"""The trio shell around the protocol: links (the multiplexer) and their streams."""

from fluidity.protocol import FrameTooLarge

from .errors import LinkClosed, StreamLimit, StreamReset, TunnelError
from .link import Link, LinkConfig, LinkStatistics, open_link, serve_link
from .stream import Reply, TunnelStream

__all__ = [
    "FrameTooLarge",
    "Link",
    "LinkClosed",
    "LinkConfig",
    "LinkStatistics",
    "Reply",
    "StreamLimit",
    "StreamReset",
    "TunnelError",
    "TunnelStream",
    "open_link",
    "serve_link",
]
