"""`fluidity local up`: a server and an agent on this machine, supervised under one nursery.

Certificates are made on first use in the state directory. The server binds an ephemeral
loopback port and says which in its ready file; the agent is then started against it. Output
of both is shown with a prefix; Ctrl-C (or SIGTERM) stops the agent, then the server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import trio

from fluidity import certs

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


async def _pump_output(name: str, stream: trio.abc.ReceiveStream) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            print(f"[{name}] {line.decode(errors='replace')}", flush=True)
    if buffer:
        print(f"[{name}] {buffer.decode(errors='replace')}", flush=True)


async def _start(
    nursery: trio.Nursery, name: str, args: list[str], ready: Path
) -> tuple[trio.Process, dict[str, int]]:
    ready_file = trio.Path(ready)
    await ready_file.unlink(missing_ok=True)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", f"fluidity.{name}", *args, "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
    )
    assert process.stdout is not None
    nursery.start_soon(_pump_output, name, process.stdout)
    with trio.fail_after(START_TIMEOUT):
        while not await ready_file.exists():
            if process.poll() is not None:
                raise SystemExit(f"the {name} exited during start-up (code {process.returncode})")
            await trio.sleep(0.05)
    return process, json.loads(await ready_file.read_text())


async def _stop(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def up(state_dir: Path, port: int) -> None:
    """Run until Ctrl-C."""
    cert_dir = state_dir / "certs"
    if not (cert_dir / "ca.pem").exists():
        certs.init_dir(cert_dir)
        print(f"made certificates in {cert_dir}", flush=True)

    def cert(name: str) -> str:
        return str(cert_dir / name)

    server_args = [
        "--listen-host", "127.0.0.1", "--listen-port", "0",
        "--health-host", "127.0.0.1", "--health-port", "0",
        "--server-cert", cert("server.pem"), "--server-key", cert("server-key.pem"),
        "--ca-cert", cert("ca.pem"),
    ]  # fmt: skip
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server, info = await _start(nursery, "server", server_args, state_dir / "server.json")
            agent_args = [
                "--listen-host", "127.0.0.1", "--listen-port", str(port),
                "--server-host", "127.0.0.1", "--server-port", str(info["listen_port"]),
                "--client-cert", cert("client.pem"), "--client-key", cert("client-key.pem"),
                "--ca-cert", cert("ca.pem"),
            ]  # fmt: skip
            try:
                agent, agent_info = await _start(
                    nursery, "agent", agent_args, state_dir / "agent.json"
                )
                try:
                    proxy = f"http://127.0.0.1:{agent_info['listen_port']}"
                    print(
                        f"\nFluidity is up. Proxy: {proxy}\n"
                        f"  try:    curl -x {proxy} https://example.com\n"
                        f"  health: curl {proxy}/healthz\n"
                        f"Ctrl-C stops it.\n",
                        flush=True,
                    )
                    async for _ in signals:
                        break
                    print("stopping...", flush=True)
                finally:
                    await _stop(agent)
            finally:
                await _stop(server)
    print("stopped", flush=True)


def run(state_dir: Path, port: int) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    trio.run(up, state_dir, port)
    return 0
