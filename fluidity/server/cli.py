"""``fluidity-server`` / ``python -m fluidity.server``: run the tunnel server."""

from __future__ import annotations

import click

from fluidity.config import ServerConfig, click_options
from fluidity.runcli import run_process


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(ServerConfig)
def main(config: str | None, **flags: object) -> None:
    """Run the Fluidity server: accept agents' mutually authenticated TLS 1.3 links and make
    the requests they carry.

    Every option can also be set in the YAML file given by --config (key: the option name with
    underscores) or in the environment (FLUIDITY_<NAME>); flags win over the environment, which
    wins over the file. Certificates and keys are a file path or the PEM text itself.
    """
    from fluidity.server.app import run  # the app pulls in trio and the tunnel: import it late

    run_process(ServerConfig, config, flags, run)
