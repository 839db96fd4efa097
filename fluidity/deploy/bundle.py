"""What a deployment ships, read from the installed package: the templates and the Lambda zip.

The repository keeps them at its top level (cfn/, lambda_src/); the package carries them as
``fluidity._cfn`` and ``fluidity._lambda_src`` (package-dir in pyproject.toml), so the same
files are found in an editable install and in a wheel, and `fluidity deploy` and the local
cloud need no checkout.
"""

from __future__ import annotations

import importlib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from types import ModuleType

__all__ = ["CFN_DIR", "build_lambda_zip", "lambda_zip_bytes", "template_text"]

#: cfn/: fargate.yaml and lambda.yaml.
CFN_DIR: Traversable = files("fluidity._cfn")


def template_text(name: str) -> str:
    """The text of cfn/<name>."""
    return (CFN_DIR / name).read_text(encoding="utf-8")


def _build_zip() -> ModuleType:
    """lambda_src/build_zip.py, which finds the handlers' package beside itself."""
    return importlib.import_module("fluidity._lambda_src.build_zip")


def lambda_zip_bytes() -> bytes:
    """The control-plane zip, built reproducibly (the same sources give the same bytes)."""
    data: bytes = _build_zip().zip_bytes()
    return data


def build_lambda_zip(out: Path) -> Path:
    """Write the zip to `out`; returns `out`."""
    _build_zip().build(out)
    return out
