"""``fluidity-agent`` / ``python -m fluidity.agent``: run the local HTTP proxy."""

from __future__ import annotations

from fluidity.runcli import process_command

from .settings import AgentConfig

main = process_command(
    AgentConfig,
    "fluidity.agent.app",
    """Run the Fluidity agent: a local HTTP proxy whose connections all go through one mutually
    authenticated TLS 1.3 link to the Fluidity server.

    Every option can also be set in the YAML file given by --config (key: the option name with
    underscores) or in the environment (FLUIDITY_<NAME>); flags win over the environment, which
    wins over the file. Certificates and keys are a file path or the PEM text itself.
    """,
)
