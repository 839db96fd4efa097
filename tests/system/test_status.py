"""What a person sees of the agent: the status page at its address, `fluidity status`, and
what it does (and does not) ask of a control plane that cannot wake the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import trio
import yaml

from fluidity.localcloud.apigateway import ApiGateway
from tests.support.origins import http_origin
from tests.support.pki import Pki
from tests.support.processes import agent_args, run_fluidity

from .helpers import Tunnel


async def fluidity_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`python -m fluidity ARGS`: exit status and output."""
    result = await trio.run_process(
        [sys.executable, "-m", "fluidity", *args],
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
        env=env,
    )
    return result.returncode, result.stdout.decode()


def agent_yaml(pki: Pki, path: Path, **settings: Any) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "ca_cert": pki.path("ca.pem"),
                "client_cert": pki.path("client.pem"),
                "client_key": pki.path("client-key.pem"),
                **settings,
            }
        )
    )
    return path


async def link_up(tunnel: Tunnel) -> None:
    """Return once the agent's link is up: a proxied request went through."""
    async with (
        http_origin() as origin,
        httpx2.AsyncClient(proxy=tunnel.proxy, trust_env=False, timeout=30) as http,
    ):
        response = await http.get(f"http://origin.test:{origin.port}/echo")
    assert response.status_code == 200


async def test_a_browser_at_the_agent_address_gets_the_status_page(tunnel: Tunnel) -> None:
    await link_up(tunnel)
    async with httpx2.AsyncClient(trust_env=False) as http:
        page = await http.get(f"{tunnel.proxy}/", headers={"accept": "text/html"})
        foreign = await http.get(f"{tunnel.proxy}/", headers={"host": "attacker.example"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-fluidity-reason"] == "status-page"
    assert "up: requests go through the tunnel" in page.text
    assert f"127.0.0.1:{tunnel.server.port}" in page.text
    assert f"curl -x {tunnel.proxy} https://example.com" in page.text
    assert 'http-equiv="refresh"' not in page.text, "an up tunnel needs no reloading"
    # A page that got its own name to resolve to 127.0.0.1 must not read the state.
    assert foreign.status_code == 400
    assert foreign.headers["x-fluidity-reason"] == "not-a-proxy-request"
    assert str(tunnel.server.port) not in foreign.text


async def test_fluidity_status_reports_the_running_agent(
    tunnel: Tunnel, pki: Pki, tmp_path: Path
) -> None:
    await link_up(tunnel)
    config = agent_yaml(pki, tmp_path / "agent.yaml", listen_port=tunnel.agent.port)
    code, out = await fluidity_cli("status", "--config", str(config))
    assert code == 0, out
    assert f"agent: http://127.0.0.1:{tunnel.agent.port}" in out
    assert "up: requests go through the tunnel" in out
    assert "none configured (no api_url)" in out


async def test_fluidity_status_says_when_no_agent_runs(pki: Pki, tmp_path: Path) -> None:
    with trio.socket.socket() as placeholder:  # bound, not listening: nothing answers
        await placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        config = agent_yaml(pki, tmp_path / "agent.yaml", listen_port=port)
        code, out = await fluidity_cli("status", "--config", str(config))
    assert code == 1
    assert f"agent: not running: no agent answers at http://127.0.0.1:{port}" in out


async def test_a_server_never_woken_is_not_killed_on_exit(pki: Pki, tmp_path: Path) -> None:
    kills = 0

    def refuse(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 400, "headers": {}, "body": '{"message": "no such service"}'}

    def kill(event: dict[str, Any], context: Any) -> dict[str, Any]:
        nonlocal kills
        kills += 1
        return {"statusCode": 200, "headers": {}, "body": '{"state": "stopped"}'}

    api = ApiGateway({("POST", "/wake"): refuse, ("POST", "/kill"): kill}, api_key="key")
    async with trio.open_nursery() as nursery:
        api_port = await nursery.start(api.serve)
        args = agent_args(pki, 1, "--api-url", f"http://127.0.0.1:{api_port}", "--api-key", "key")
        async with run_fluidity("fluidity.agent", args, tmp_path, wait_ready=False) as agent:
            with trio.fail_after(30):
                code = await agent.wait()
        nursery.cancel_scope.cancel()
    output = agent.log()
    assert code == 1, output
    assert kills == 0, "no server was woken, so none is killed"
    assert "kill" not in output.lower(), output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert "could not wake the server" in errors[0]


async def test_head_of_the_agent_pages_has_the_headers_and_no_body(tunnel: Tunnel) -> None:
    async with httpx2.AsyncClient(trust_env=False) as http:
        page = await http.head(f"{tunnel.proxy}/")
        health = await http.head(f"{tunnel.proxy}/healthz")
        after = await http.get(f"{tunnel.proxy}/healthz")  # the agent is still fine
    assert page.status_code == 200
    assert page.headers["x-fluidity-reason"] == "status-page"
    assert int(page.headers["content-length"]) > 0
    assert page.content == b""
    assert health.headers["x-fluidity-reason"] == "healthz"
    assert health.content == b""
    assert after.json()["tunnel"] in {"up", "connecting"}
    assert "error serving a client connection" not in tunnel.agent.log()
