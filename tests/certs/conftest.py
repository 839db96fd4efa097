"""A certificate directory made by `fluidity certs init`, shared by the tests of this package."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from fluidity import certs


@attrs.frozen
class Pki:
    """The files of one `certs init` run, by role."""

    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / certs.CA_CERT)

    @property
    def server(self) -> tuple[str, str]:
        return str(self.dir / certs.SERVER_CERT), str(self.dir / certs.SERVER_KEY)

    @property
    def client(self) -> tuple[str, str]:
        return str(self.dir / certs.CLIENT_CERT), str(self.dir / certs.CLIENT_KEY)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, server (fluidity-server) and client certificates written by `certs.init_dir`."""
    directory = tmp_path_factory.mktemp("pki") / "certs"
    certs.init_dir(directory)
    return Pki(directory)
