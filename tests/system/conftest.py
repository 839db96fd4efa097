"""System fixtures: certificates from `fluidity certs`, and the real server and agent processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.pki import Pki
from tests.support.processes import agent_args, run_fluidity, server_args

from .helpers import SERVER_ENV, Tunnel


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
