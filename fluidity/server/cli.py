"""``fluidity-server`` / ``python -m fluidity.server``: run the tunnel server."""

from __future__ import annotations

from fluidity.runcli import process_command

from .settings import ServerConfig

main = process_command(
    ServerConfig,
    "fluidity.server.app",
    """Run the Fluidity server: accept agents' mutually authenticated TLS 1.3 links and make
    the requests they carry.

    Every option can also be set in the YAML file given by --config (key: the option name with
    underscores) or in the environment (FLUIDITY_<NAME>); flags win over the environment, which
    wins over the file. Certificates and keys are a file path or the PEM text itself.
    """,
)
