"""`fluidity local up` as the README has a newcomer run it: chosen ports, a local origin
allowed with --egress-allow (no internet needed), the lifecycle in the output and nothing else,
Ctrl-C stops everything."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx2
import trio

from fluidity.processes import stop_process
from tests.support.origins import http_origin


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_local_up_with_chosen_ports_and_a_local_origin(tmp_path: Path) -> None:
    api, server, aws = free_port(), free_port(), free_port()
    output = b""
    async with http_origin() as origin:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "fluidity", "local", "up", "--port", "0",
             "--api-port", str(api), "--server-port", str(server), "--aws-port", str(aws),
             "--egress-allow", "127.0.0.1/32", "--state-dir", str(tmp_path / "state"),
             "--start-delay", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            with trio.fail_after(90):
                while not (up := re.search(rb"Proxy: (http://127\.0\.0\.1:\d+)", output)):
                    chunk = await process.stdout.receive_some(65536)
                    assert chunk, output.decode()
                    output += chunk
            proxy = up.group(1).decode()
            async with httpx2.AsyncClient(proxy=proxy, trust_env=False, timeout=60) as http:
                with trio.fail_after(60):  # the first request waits for the wake
                    response = await http.get(f"http://127.0.0.1:{origin.port}/echo")
            assert response.status_code == 200
            process.send_signal(signal.SIGINT)  # Ctrl-C
            with trio.fail_after(60):
                while chunk := await process.stdout.receive_some(65536):
                    output += chunk
                code = await process.wait()
        finally:
            await stop_process(process, 10)
    text = output.decode()
    print(text)
    assert code == 0
    assert f"api_url: http://127.0.0.1:{api}" in text
    assert f"aws_endpoint: http://127.0.0.1:{aws}" in text
    assert f"server_port: {server}" in text
    assert "wake: waking" in text, "the lifecycle is told"
    assert "tunnel up" in text
    assert "werkzeug" not in text, "no access line per AWS call"
    assert " WARNING " not in text
    assert text.rstrip().endswith("stopped")
