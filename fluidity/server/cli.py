"""``fluidity-server`` / ``python -m fluidity.server``: run the tunnel server."""

from __future__ import annotations

import logging
import os
import sys

import click

from fluidity.config import ConfigError, ServerConfig, click_options, load_config, redacted
from fluidity.logs import setup_logging

log = logging.getLogger("fluidity.server")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(ServerConfig)
def main(config: str | None, **flags: object) -> None:
    """Run the Fluidity server: accept agents' mutually authenticated TLS 1.3 links and make
    the requests they carry.

    Every option can also be set in the YAML file given by --config (key: the option name with
    underscores) or in the environment (FLUIDITY_<NAME>); flags win over the environment, which
    wins over the file. Certificates and keys are a file path or the PEM text itself.
    """
    try:
        settings = load_config(ServerConfig, path=config, env=os.environ, flags=flags)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    log.debug("configuration", extra={"config": redacted(settings)})
    from fluidity.server.app import run  # the app pulls in trio and the tunnel: import it late

    try:
        code = run(settings)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
