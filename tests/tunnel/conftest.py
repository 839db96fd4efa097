"""Fixtures for the multiplexer tests; the helpers themselves live in `helpers.py`."""

from __future__ import annotations

import ssl

import pytest
import trustme

from .helpers import linked_pair

__all__ = ["linked_pair"]


@pytest.fixture(scope="session")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(agent, server) TLS 1.3 contexts for mutual auth, both issued by one trustme CA."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("server.fluidity.test")
    agent_cert = ca.issue_cert("agent.fluidity.test")

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.verify_mode = ssl.CERT_REQUIRED
    server_cert.configure_cert(server)
    ca.configure_trust(server)

    agent = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    agent.minimum_version = ssl.TLSVersion.TLSv1_3
    agent_cert.configure_cert(agent)
    ca.configure_trust(agent)
    return agent, server
