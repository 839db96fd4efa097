"""System fixtures: certificates from `fluidity certs`, and the real server and agent processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from tests.support.processes import (
    SERVER_TEST_ENV,
    Pki,
    Running,
    agent_args,
    make_pki,
    run_fluidity,
    server_args,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, server and client certificates made by the real `fluidity certs init`."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@attrs.frozen
class Tunnel:
    server: Running
    agent: Running
    workdir: Path

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}"


#: A short upstream read timeout so the hanging-origin test answers 504 quickly.
SERVER_ENV = {**SERVER_TEST_ENV, "FLUIDITY_UPSTREAM_READ_TIMEOUT": "3"}


@pytest.fixture
async def tunnel(pki: Pki, tmp_path: Path) -> AsyncIterator[Tunnel]:
    """`python -m fluidity.server` and `python -m fluidity.agent`, linked, on loopback."""
    async with (
        run_fluidity("fluidity.server", server_args(pki), tmp_path, env=SERVER_ENV) as srv,
        run_fluidity("fluidity.agent", agent_args(pki, srv.port), tmp_path) as agent,
    ):
        try:
            yield Tunnel(srv, agent, tmp_path)
        finally:
            # Shown by pytest when the test fails.
            print(f"--- server log ---\n{srv.log()}\n--- agent log ---\n{agent.log()}")
