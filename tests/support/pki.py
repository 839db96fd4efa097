"""Certificates for tests, made one way each: the real `fluidity certs init` for the files the
agent and server load, trustme for in-process TLS (origins, and mutual TLS between links).

tests/conftest.py shares one `certs init` directory for the session (`pki`, `cert_dir`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import trustme

from fluidity import certs

#: The names trustme certificates are issued for unless a test asks for others.
ORIGIN_NAMES = ("localhost", "127.0.0.1", "origin.test")


# -- `fluidity certs init` ------------------------------------------------------------------


@attrs.frozen
class Pki:
    """The files of one `fluidity certs init` run."""

    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path(certs.CA_CERT)

    @property
    def server(self) -> tuple[str, str]:
        """(certificate, key) of the server."""
        return self.path(certs.SERVER_CERT), self.path(certs.SERVER_KEY)

    @property
    def client(self) -> tuple[str, str]:
        """(certificate, key) of the client (the agent)."""
        return self.path(certs.CLIENT_CERT), self.path(certs.CLIENT_KEY)


def make_pki(directory: Path, *extra: str) -> Pki:
    """Run the real certificate tool (`fluidity certs init --dir directory ...extra`)."""
    from click.testing import CliRunner

    from fluidity.cli import main

    result = CliRunner().invoke(main, ["certs", "init", "--dir", str(directory), *extra])
    assert result.exit_code == 0, result.output
    return Pki(directory)


# -- trustme --------------------------------------------------------------------------------


@attrs.frozen
class TestTLS:
    """A trustme CA, a server context with a certificate for some names, a client trusting it."""

    __test__ = False  # not a pytest test class

    ca: trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_tls(*names: str) -> TestTLS:
    """A TLS origin's server context (for `names`, ORIGIN_NAMES by default) and a client's."""
    ca = trustme.CA()
    cert = ca.issue_cert(*(names or ORIGIN_NAMES))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return TestTLS(ca, server, client)


@attrs.frozen
class MutualTLS:
    """Contexts for a link's two ends: TLS 1.3 only, each end's certificate from one CA."""

    ca: trustme.CA
    agent: ssl.SSLContext
    server: ssl.SSLContext


def mutual_tls(
    server_name: str = "server.fluidity.test", agent_name: str = "agent.fluidity.test"
) -> MutualTLS:
    """An agent context (client certificate `agent_name`, verifies `server_name`) and a
    server context that requires a client certificate, both issued by one trustme CA."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.verify_mode = ssl.CERT_REQUIRED
    ca.issue_cert(server_name).configure_cert(server)
    ca.configure_trust(server)

    agent = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    agent.minimum_version = ssl.TLSVersion.TLSv1_3
    ca.issue_cert(agent_name).configure_cert(agent)
    ca.configure_trust(agent)
    return MutualTLS(ca, agent, server)
