"""A flood of connections that never start TLS neither bloats the server nor locks agents out.

Before, every connection accepted got an SSL object and waited `handshake_timeout` for its
ClientHello, with no bound on how many did: 400 stalled connections cost the server 21 MB, and
more would have cost more. Now connections are bounded before their handshake ends (at most 8
per address, 64 in all, by default) and the oldest silent one is shed for each newcomer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from tests.support.curl import curl
from tests.support.origins import http_origin
from tests.support.pki import Pki
from tests.support.processes import Running, agent_args, run_fluidity, server_args

from .helpers import SERVER_ENV

FLOOD = 300
#: What the server may grow by while flooded: a few tasks and sockets' worth, not 300 SSL objects.
RSS_BUDGET_KB = 4 * 1024


def rss_kb(process: trio.Process, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{process.pid}/status")


async def health(server: Running) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.info['health_port']}/healthz"
    async with httpx2.AsyncClient(trust_env=False, timeout=10) as http:
        body: dict[str, Any] = (await http.get(url)).json()
    return body


class Flood:
    """Raw TCP connections to the server that never send a byte; counts those it closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sockets: list[trio.socket.SocketType] = []
        self.closed_by_server = 0
        self._lot = trio.lowlevel.ParkingLot()

    async def open(self, nursery: trio.Nursery) -> None:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", self.port))
        self.sockets.append(sock)
        nursery.start_soon(self._watch, sock)

    async def _watch(self, sock: trio.socket.SocketType) -> None:
        try:
            await sock.recv(1)  # b"" (or a reset) once the server closed it
        except trio.ClosedResourceError:
            return  # we closed it
        except OSError:
            pass
        self.closed_by_server += 1
        self._lot.unpark_all()

    async def wait_closed(self, n: int) -> None:
        while self.closed_by_server < n:
            await self._lot.park()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize(
    ("settings", "cap", "setting"),
    [
        ({}, 8, "max_handshakes_per_source=8"),  # the defaults: one address gets 8
        (  # one address may fill the global cap
            {"FLUIDITY_MAX_HANDSHAKES": "16", "FLUIDITY_MAX_HANDSHAKES_PER_SOURCE": "1000"},
            16,
            "max_handshakes=16",
        ),
    ],
    ids=["per-source-cap", "global-cap"],
)
async def test_a_flood_of_silent_connections_is_shed_and_an_agent_still_connects(
    pki: Pki, tmp_path: Path, settings: dict[str, str], cap: int, setting: str
) -> None:
    env = {**SERVER_ENV, **settings}
    with trio.fail_after(60):
        async with (
            run_fluidity("fluidity.server", server_args(pki), tmp_path, env=env) as srv,
            http_origin() as origin,
            trio.open_nursery() as nursery,
        ):
            baseline = rss_kb(srv.process)
            flood = Flood(srv.port)
            try:
                for _ in range(FLOOD):
                    await flood.open(nursery)
                # Oldest silent first: all but the last few are closed by the server at once.
                await flood.wait_closed(FLOOD - cap)
                flooded = await health(srv)
                grown = rss_kb(srv.process) - baseline
                # An agent from the same address, while the flood holds its slots and goes on:
                # every new silent connection sheds one, the agent's talking handshake stays.
                agent_up = trio.Event()

                async def keep_flooding() -> None:
                    for _ in range(FLOOD):
                        if agent_up.is_set():
                            return
                        await flood.open(nursery)
                        await flood.wait_closed(len(flood.sockets) - cap)

                nursery.start_soon(keep_flooding)
                async with run_fluidity(
                    "fluidity.agent", agent_args(pki, srv.port), tmp_path
                ) as agent:
                    code, out, err = await curl(
                        "-x", f"http://127.0.0.1:{agent.port}", "-o", "/dev/null",
                        "-w", "%{http_code}", f"http://origin.test:{origin.port}/echo",
                    )  # fmt: skip
                    agent_up.set()
                    linked = await health(srv)
                    peak = rss_kb(srv.process, "VmHWM") - baseline
            finally:
                flood.close()
                print(f"--- server log ---\n{srv.log()}")
            nursery.cancel_scope.cancel()
    assert flood.closed_by_server >= FLOOD - cap
    assert flooded["handshakes"] <= cap
    assert grown < RSS_BUDGET_KB, f"the server grew by {grown} KiB for {FLOOD} silent connections"
    assert (code, out) == (0, "200"), err
    assert linked["links"] == 1
    assert linked["handshakes"] <= cap
    assert peak < 2 * RSS_BUDGET_KB, f"the server's peak grew by {peak} KiB"
    assert setting in srv.log()  # the warning names the cap
