"""Fluidity: a personal HTTP tunnel.

The agent is a local HTTP proxy; it carries every proxied connection over one mutually
authenticated TLS 1.3 link to the server, which makes the real requests.

Packages:
    protocol    sans-I/O wire protocol: messages, frame codec, stream states, flow control
    tunnel      the trio shell that runs the protocol over a byte stream (the multiplexer)
    agent       the local proxy, the tunnel client, the control-plane client, the status page
    server      the mTLS listener, upstream HTTP, CONNECT and WebSocket, the egress policy
    deploy      `fluidity deploy` / `destroy` on AWS
    localcloud  `fluidity local up`: the control plane on this machine
"""

__version__ = "0.1.0"
