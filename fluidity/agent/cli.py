"""``fluidity-agent`` / ``python -m fluidity.agent``: run the local HTTP proxy."""

from __future__ import annotations

import click

from fluidity.config import AgentConfig, click_options
from fluidity.runcli import run_process


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(AgentConfig)
def main(config: str | None, **flags: object) -> None:
    """Run the Fluidity agent: a local HTTP proxy whose connections all go through one mutually
    authenticated TLS 1.3 link to the Fluidity server.

    Every option can also be set in the YAML file given by --config (key: the option name with
    underscores) or in the environment (FLUIDITY_<NAME>); flags win over the environment, which
    wins over the file. Certificates and keys are a file path or the PEM text itself.
    """
    from fluidity.agent.app import run  # the app pulls in trio and the tunnel: import it late

    run_process(AgentConfig, config, flags, run)
