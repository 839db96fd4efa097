"""`fluidity local up`: the whole system on this machine, supervised under one trio nursery.

The local cloud (moto as AWS, the API Gateway, EventBridge and Fargate stand-ins running the
real Lambda handlers from the built zip) plus an agent configured against it. The agent wakes
the server through the API, the Sleep schedule puts it to sleep when idle, and the next request
wakes it again, as on AWS, with minutes running as seconds by default. Ctrl-C stops everything.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from fluidity import processes
from fluidity.localcloud.cloud import CloudSettings, LocalCloud, describe, run_local_cloud
from fluidity.readyfile import wait_ready_file

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


async def _pump_output(name: str, stream: trio.abc.ReceiveStream) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            print(f"[{name}] {line.decode(errors='replace')}", flush=True)
    if buffer:
        print(f"[{name}] {buffer.decode(errors='replace')}", flush=True)


async def start_agent(
    nursery: trio.Nursery, cloud: LocalCloud, port: int, extra: list[str] | None = None
) -> tuple[trio.Process, int]:
    """Start `python -m fluidity.agent` against the cloud; returns it and its proxy port."""
    ready = trio.Path(cloud.workdir / "agent.json")
    await ready.unlink(missing_ok=True)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "fluidity.agent", *cloud.agent_args(port), *(extra or []),
         "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the agent in order
    )  # fmt: skip
    assert process.stdout is not None
    nursery.start_soon(_pump_output, "agent", process.stdout)
    with trio.fail_after(START_TIMEOUT):
        info = await wait_ready_file(cloud.workdir / "agent.json", process)
    if info is None:
        raise SystemExit(f"the agent exited during start-up (code {process.returncode})")
    return process, int(info["listen_port"])


async def stop_process(process: trio.Process) -> int:
    """Stop a process we started (SIGTERM, SIGKILL after STOP_TIMEOUT); its exit code."""
    return await processes.stop_process(process, STOP_TIMEOUT)


async def up(state_dir: Path, port: int, settings: CloudSettings) -> None:
    """Run until Ctrl-C."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_local_cloud(settings, state_dir) as cloud, trio.open_nursery() as nursery:
            for key, value in describe(cloud).items():
                print(f"  {key}: {value}", flush=True)
            agent, agent_port = await start_agent(nursery, cloud, port)
            proxy = f"http://127.0.0.1:{agent_port}"
            print(
                f"\nFluidity is up (local cloud). Proxy: {proxy}\n"
                f"  try:    curl -x {proxy} https://example.com\n"
                f"  state:  {proxy}/ in a browser, or curl {proxy}/healthz\n"
                "  no internet? restart with --egress-allow 127.0.0.1/32 and try a local origin\n"
                f"          (python3 -m http.server 9000; curl -x {proxy} http://127.0.0.1:9000/)\n"
                f"The server sleeps when idle and wakes on the next request. Ctrl-C stops all.\n",
                flush=True,
            )
            async for _ in signals:
                break
            print("stopping...", flush=True)
            code = await stop_process(agent)
            print(f"agent exited with {code}", flush=True)
            nursery.cancel_scope.cancel()
    print("stopped", flush=True)


def run(state_dir: Path, port: int, settings: CloudSettings, *, log_level: str = "info") -> int:
    """`fluidity local up`; at "info" only the lifecycle (wake, start, sleep, stop) is told:
    the access lines of moto's server, and the Lambda handlers' lines for every status poll,
    come at "debug"."""
    import logging

    from fluidity.logs import setup_logging

    setup_logging(log_level, "text", stream=sys.stdout)
    if log_level != "debug":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto: a line per AWS call
        logging.getLogger("fluidity_lambda").addFilter(lambda record: record.levelno > logging.INFO)
    trio.run(up, state_dir, port, settings)
    return 0
