"""A CONNECT tunnel that never ends is closed by the server, so the server may sleep again.

Before, a client that half-closed its tunnel to an origin that never answers kept the stream
open, counted in ActiveConnections (the health endpoint's `active_connections`), for ever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from tests.support.origins import serve_loopback
from tests.support.pki import Pki
from tests.support.processes import Running, agent_args, run_fluidity, server_args

from .helpers import SERVER_ENV, Tunnel, open_connect

HALF_CLOSED = 0.5


@pytest.fixture
async def short_lived(pki: Pki, tmp_path: Path) -> AsyncIterator[Tunnel]:
    """The real server and agent, the server ending half-closed tunnels after 0.5 s."""
    env = {**SERVER_ENV, "FLUIDITY_HALF_CLOSED_TIMEOUT": str(HALF_CLOSED)}
    async with (
        run_fluidity("fluidity.server", server_args(pki), tmp_path, env=env) as srv,
        run_fluidity("fluidity.agent", agent_args(pki, srv.port), tmp_path) as agent,
    ):
        try:
            yield Tunnel(srv, agent, tmp_path)
        finally:
            print(f"--- server log ---\n{srv.log()}\n--- agent log ---\n{agent.log()}")


async def health(server: Running) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.info['health_port']}/healthz"
    async with httpx2.AsyncClient(trust_env=False, timeout=10) as http:
        body: dict[str, Any] = (await http.get(url)).json()
    return body


async def test_a_half_closed_tunnel_to_a_silent_origin_ends_and_stops_counting(
    short_lived: Tunnel,
) -> None:
    client_eof = trio.Event()
    received = bytearray()

    async def silent(tcp: trio.SocketStream) -> None:
        """Reads to the client's EOF, answers nothing, keeps its side open."""
        while data := await tcp.receive_some(65536):
            received.extend(data)
        client_eof.set()
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with serve_loopback(silent) as port:
            stream, head = await open_connect(short_lived, f"origin.test:{port}")
            async with stream:
                assert head.startswith(b"HTTP/1.1 200 ")
                await stream.send_all(b"request, then nothing more")
                start = trio.current_time()
                await stream.send_eof()
                await client_eof.wait()
                during = await health(short_lived.server)
                assert await stream.receive_some(65536) == b""  # the server's EOF
                waited = trio.current_time() - start
            after = await health(short_lived.server)
    assert bytes(received) == b"request, then nothing more"
    assert during["active_connections"] == 1
    assert after["active_connections"] == 0
    assert waited >= HALF_CLOSED
    assert "(half_closed_timeout)" in short_lived.server.log()
