"""The command of each process (``fluidity-agent``, ``fluidity-server``): settings, then run.

`fluidity.settings` builds the click command and loads the settings; what is left is the same
for both processes: set up logging, run the app, exit with its status.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from fluidity.logs import setup_logging
from fluidity.settings import command, redacted


def process_command(cls: type[Any], app: str, doc: str) -> click.Command:
    """The command that loads `cls` and runs ``<app>.run(settings)``, exiting with its status.

    A bad setting exits with status 2 and ``error: ...`` before anything starts.
    """

    def run(settings: Any) -> None:
        setup_logging(settings.log_level, settings.log_format)
        logging.getLogger("fluidity").debug("configuration", extra={"config": redacted(settings)})
        module = importlib.import_module(app)  # it pulls in trio and the tunnel: import it late
        try:
            code = module.run(settings)
        except KeyboardInterrupt:
            code = 130
        sys.exit(code)

    return command(cls, run, doc)
