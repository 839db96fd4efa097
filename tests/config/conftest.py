"""Certificate settings (from the session's `cert_dir`, tests/conftest.py) and config files, for
the loader tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def agent_certs(cert_dir: Path) -> dict[str, str]:
    """The agent's certificate settings, as paths."""
    return {
        "ca_cert": str(cert_dir / "ca.pem"),
        "client_cert": str(cert_dir / "client.pem"),
        "client_key": str(cert_dir / "client-key.pem"),
    }


@pytest.fixture
def server_certs(cert_dir: Path) -> dict[str, str]:
    """The server's certificate settings, as paths."""
    return {
        "ca_cert": str(cert_dir / "ca.pem"),
        "server_cert": str(cert_dir / "server.pem"),
        "server_key": str(cert_dir / "server-key.pem"),
    }


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[object], str]:
    """Write a mapping (or raw text) as a YAML config file; return its path."""

    def write(content: object) -> str:
        path = tmp_path / "config.yaml"
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        path.write_text(text)
        return str(path)

    return write
