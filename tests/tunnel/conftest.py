"""Fixtures for the multiplexer tests; the helpers themselves live in `helpers.py`."""

from __future__ import annotations

import ssl

import pytest

from tests.support.pki import mutual_tls

from .helpers import linked_pair

__all__ = ["linked_pair"]


@pytest.fixture(scope="session")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(agent, server) TLS 1.3 contexts for mutual auth, both issued by one trustme CA."""
    tls = mutual_tls()
    return tls.agent, tls.server
