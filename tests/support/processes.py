"""Start the real `python -m fluidity.server` / `python -m fluidity.agent` processes.

Each process binds port 0 on loopback and reports its ports through a ready file; its output
goes to a log file the test can read (and that is printed when a test fails).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from fluidity.processes import stop_process
from fluidity.readyfile import wait_ready_file
from tests.support.pki import Pki

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


@attrs.define
class Running:
    """A started process and what it reported in its ready file."""

    name: str
    process: trio.Process
    log_path: Path
    info: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.info["listen_port"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait(self) -> int:
        return await self.process.wait()


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUIDITY_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@asynccontextmanager
async def run_fluidity(
    module: str,
    args: list[str],
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[Running]:
    """Run `python -m <module> args...` until the block ends (then SIGTERM, then SIGKILL)."""
    name = name or module.rsplit(".", 1)[-1]
    ready = workdir / f"{name}-ready.json"
    ready.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - a local file, opened once
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", module, *args, "--ready-file", str(ready)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_env(env or {}),
        )
    running = Running(name, process, log_path, {})
    try:
        if wait_ready:
            with trio.fail_after(START_TIMEOUT):
                info = await wait_ready_file(ready, process)
            if info is None:
                raise RuntimeError(f"{name} exited early:\n{running.log()}")
            running.info = info
        yield running
    finally:
        await stop_process(process, STOP_TIMEOUT)


def server_args(pki: Pki, *extra: str) -> list[str]:
    return [
        "--listen-host", "127.0.0.1", "--listen-port", "0",
        "--health-host", "127.0.0.1", "--health-port", "0",
        "--server-cert", pki.path("server.pem"),
        "--server-key", pki.path("server-key.pem"),
        "--ca-cert", pki.path("ca.pem"),
        *extra,
    ]  # fmt: skip


def agent_args(pki: Pki, server_port: int, *extra: str) -> list[str]:
    return [
        "--listen-host", "127.0.0.1", "--listen-port", "0",
        "--server-host", "127.0.0.1", "--server-port", str(server_port),
        "--client-cert", pki.path("client.pem"),
        "--client-key", pki.path("client-key.pem"),
        "--ca-cert", pki.path("ca.pem"),
        "--reconnect-min-delay", "0.1", "--reconnect-max-delay", "1",
        *extra,
    ]  # fmt: skip


#: Lets the server reach test origins on loopback and resolve test names without DNS.
SERVER_TEST_ENV = {
    "FLUIDITY_EGRESS_ALLOW": "127.0.0.0/8,::1/128",
    "FLUIDITY_RESOLVER": "static",
    "FLUIDITY_STATIC_HOSTS": "origin.test=127.0.0.1,localhost=127.0.0.1",
}
