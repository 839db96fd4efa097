"""Build the Lambda zip (`fluidity.deploy.bundle`) and load its handlers from the zip itself.

Loading from the zip (not the source tree) is the point: the local cloud then runs exactly
what would be uploaded, and a module missing from the zip fails here as it would on AWS.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fluidity.deploy.bundle import build_lambda_zip

Handler = Callable[[dict[str, Any], Any], Any]

PACKAGE = "fluidity_lambda"
HANDLERS = ("wake", "status", "sleep", "kill")


def build_zip(out: Path) -> Path:
    """Build the reproducible zip (lambda_src/build_zip.py) at `out`; returns `out`."""
    return build_lambda_zip(out)


def load_handlers(zip_path: Path) -> dict[str, Handler]:
    """Import the handler modules from the zip; returns name -> handler(event, context)."""

    def ours(name: str) -> bool:
        return name == PACKAGE or name.startswith(PACKAGE + ".")

    # Import under a clean slate, then put back whatever was there: the handlers keep their
    # own references, and nobody else's import of the package is disturbed.
    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    entry = str(zip_path)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        modules = {name: importlib.import_module(f"{PACKAGE}.{name}") for name in HANDLERS}
    finally:
        sys.path.remove(entry)
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
        importlib.invalidate_caches()
    for module in modules.values():
        if not str(module.__file__).startswith(entry):
            raise ImportError(f"{module.__name__} was not loaded from {zip_path}")
    return {name: module.handler for name, module in modules.items()}
