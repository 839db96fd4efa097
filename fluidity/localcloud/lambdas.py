"""Build the Lambda zip from `lambda_src/` and load its handlers from the zip itself.

Loading from the zip (not the source tree) is the point: the local cloud then runs exactly
what would be uploaded, and a module missing from the zip fails here as it would on AWS.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any], Any], Any]

PACKAGE = "fluidity_lambda"
HANDLERS = ("wake", "status", "sleep", "kill")
#: lambda_src/ of the checkout this package was installed from (editable installs, nox).
LAMBDA_SRC = Path(__file__).resolve().parents[2] / "lambda_src"


def build_zip(out: Path, source: Path = LAMBDA_SRC) -> Path:
    """Build the reproducible zip with `lambda_src/build_zip.py`; returns its path."""
    script = source / "build_zip.py"
    if not script.exists():
        raise FileNotFoundError(
            f"{script} not found: the local cloud runs from a checkout of the repository"
        )
    spec = importlib.util.spec_from_file_location("fluidity_build_zip", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(out, source)
    return out


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
