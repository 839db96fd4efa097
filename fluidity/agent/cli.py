"""``fluidity-agent`` / ``python -m fluidity.agent``: run the local HTTP proxy."""

from __future__ import annotations

import logging
import os
import sys

import click

from fluidity.config import AgentConfig, ConfigError, click_options, load_config, redacted
from fluidity.logs import setup_logging

log = logging.getLogger("fluidity.agent")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(AgentConfig)
def main(config: str | None, **flags: object) -> None:
    """Run the Fluidity agent: a local HTTP proxy whose connections all go through one mutually
    authenticated TLS 1.3 link to the Fluidity server.

    Every option can also be set in the YAML file given by --config (key: the option name with
    underscores) or in the environment (FLUIDITY_<NAME>); flags win over the environment, which
    wins over the file. Certificates and keys are a file path or the PEM text itself.
    """
    try:
        settings = load_config(AgentConfig, path=config, env=os.environ, flags=flags)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    log.debug("configuration", extra={"config": redacted(settings)})
    from fluidity.agent.app import run  # the app pulls in trio and the tunnel: import it late

    try:
        code = run(settings)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
