"""Same-shape peers measured beside fluidity in the same bench run.

Absolute figures move by 2x between machines; a ratio to a peer measured in the same run on the
same machine holds. Two peers, each an HTTP proxy on 127.0.0.1 that the phases use exactly as
they use the agent:

* pproxy   (Python, our shape) two hops over TLS: a client-side pproxy listening as an HTTP
           proxy, forwarding every client connection over TLS (`http+ssl`) to a server-side
           pproxy that makes the real connections. Installed by the bench nox session.
* squid    (C, one hop) when the machine has it (`apt-get install squid`); no cache, no logs.

Each peer's processes take the roles of fluidity's: `agent` is the client-side process (none
for squid), `server` the one that reaches the origin, so the per-process rows (peak RSS, CPU
per GiB) line up. Peers reach the origin by its address (127.0.0.1): a name would send them to
the system resolver, which is off the machine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import trio
import trustme

from fluidity.processes import stop_process

PEERS = ("pproxy", "squid")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@attrs.define
class Peer:
    """A running peer: the port its HTTP proxy listens on and its processes by role."""

    name: str
    port: int
    processes: dict[str, trio.Process]
    logs: list[Path]

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pids(self) -> dict[str, int]:
        return {role: process.pid for role, process in self.processes.items()}

    def check_alive(self) -> None:
        for role, process in self.processes.items():
            if process.returncode is not None or process.poll() is not None:
                tail = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.logs)
                raise RuntimeError(f"{self.name} {role} exited:\n{tail}")


def free_port() -> int:
    """A port free on 127.0.0.1 now (the peers take a port number, not port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(port: int, processes: list[trio.Process], logs: list[Path]) -> None:
    """Wait (bounded) until something accepts on 127.0.0.1:port."""
    with trio.fail_after(START_TIMEOUT):
        while True:
            for process in processes:
                if process.poll() is not None:
                    tail = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)
                    raise RuntimeError(f"a peer process exited at start:\n{tail}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def started(command: list[str], log: Path) -> AsyncIterator[trio.Process]:
    with open(log, "ab") as log_file:  # noqa: ASYNC230 - a local file, opened once
        process = await trio.lowlevel.open_process(
            command, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        await stop_process(process, STOP_TIMEOUT)


@asynccontextmanager
async def run_pproxy(workdir: Path) -> AsyncIterator[Peer]:
    """pproxy in two hops over TLS, our shape: client HTTP proxy -> TLS -> server pproxy."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert_pem, key_pem = workdir / "pproxy-cert.pem", workdir / "pproxy-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    inner, outer = free_port(), free_port()
    pproxy = [sys.executable, "-m", "pproxy"]
    logs = [workdir / "pproxy-server.log", workdir / "pproxy-client.log"]
    async with (
        started(
            [*pproxy, "-l", f"http+ssl://127.0.0.1:{inner}", "--ssl", f"{cert_pem},{key_pem}"],
            logs[0],
        ) as server,
        started(
            [*pproxy, "-l", f"http://127.0.0.1:{outer}", "-r", f"http+ssl://127.0.0.1:{inner}"],
            logs[1],
        ) as client,
    ):
        await wait_listening(inner, [server], logs)
        await wait_listening(outer, [client], logs)
        yield Peer("pproxy", outer, {"agent": client, "server": server}, logs)


SQUID_CONF = """\
http_port 127.0.0.1:{port}
acl all_ports port 1-65535
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {dir}/cache.log
pid_filename none
coredump_dir {dir}
visible_hostname bench
dns_nameservers 127.0.0.1
shutdown_lifetime 0 seconds
client_persistent_connections on
server_persistent_connections on
"""


@asynccontextmanager
async def run_squid(workdir: Path, squid: str) -> AsyncIterator[Peer]:
    """squid, one hop, no cache and no access log, in the foreground (-N)."""
    directory = workdir / "squid"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o777)  # squid drops to its own user, which writes cache.log here
    port = free_port()
    conf = directory / "squid.conf"
    conf.write_text(SQUID_CONF.format(port=port, dir=directory))
    logs = [workdir / "squid.log", directory / "cache.log"]
    async with started([squid, "-N", "-f", str(conf)], logs[0]) as process:
        await wait_listening(port, [process], logs)
        yield Peer("squid", port, {"server": process}, logs)


def wanted(choice: str) -> list[str]:
    """--peers none|pproxy|squid|all (or a comma-separated list) as peer names."""
    if choice == "none":
        return []
    if choice == "all":
        return list(PEERS)
    names = [name.strip() for name in choice.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; choose none, all or from {list(PEERS)}")
    return names


@asynccontextmanager
async def run_peers(
    names: list[str], workdir: Path
) -> AsyncIterator[tuple[dict[str, Peer], list[str]]]:
    """Start the peers asked for that this machine has; the notes say why any was left out."""
    peers: dict[str, Peer] = {}
    notes: list[str] = []
    async with AsyncExitStack() as stack:
        for name in names:
            if name == "pproxy":
                if importlib.util.find_spec("pproxy") is None:
                    notes.append("pproxy left out: not installed (nox -s bench installs it)")
                    continue
                peers[name] = await stack.enter_async_context(run_pproxy(workdir))
            elif name == "squid":
                squid = shutil.which("squid") or (
                    "/usr/sbin/squid" if os.access("/usr/sbin/squid", os.X_OK) else None
                )
                if squid is None:
                    notes.append("squid left out: not installed (apt-get install squid)")
                    continue
                peers[name] = await stack.enter_async_context(run_squid(workdir, squid))
        yield peers, notes
