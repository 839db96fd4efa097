"""Fluidity: a personal HTTP tunnel.

The agent is a local HTTP proxy; it carries every proxied connection over one mutually
authenticated TLS 1.3 link to the server, which makes the real requests.

Packages:
    protocol  sans-I/O wire protocol: messages, frame codec, stream states, flow control
    tunnel    the trio shell that runs the protocol over a byte stream (the multiplexer)
"""

__version__ = "0.1.0"
