"""The server's life as a user sees it: wake, connect, traffic, idle sleep, wake on demand,
the daily kill and the kill on exit, with the real agent, servers and Lambda handlers; and
traffic a routing rule sends direct, which never wakes the server."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from fluidity.localcloud.cloud import LocalCloud
from fluidity.localcloud.scheduler import Firing
from fluidity.localcloud.up import stop_process
from tests.support.curl import curl
from tests.support.origins import http_origin, pattern_sha256, websocket_origin
from tests.support.pki import make_tls
from tests.support.scrape import scrape
from tests.support.wsclient import ProxiedWebSocket, proxied_websocket

from .conftest import (
    AGENT_BUG,
    DAILY_KILL,
    cloud_seconds,
    desired_count,
    metric_maximum,
    metric_names,
    proxy_client,
    running_agent,
    server_process,
    statuses,
    until,
)

SLEEP_CHECK = "SleepCheckSchedule"


async def test_wake_connect_proxy_and_kill_on_exit(cloud: LocalCloud, tmp_path: Path) -> None:
    tls = make_tls("origin.test")
    ca_file = tmp_path / "origin-ca.pem"
    tls.ca.cert_pem.write_to_path(str(ca_file))
    async with (
        http_origin() as origin,
        http_origin(tls=tls.server) as secure,
        websocket_origin() as ws_origin,
        running_agent(cloud) as agent,
    ):
        with trio.fail_after(30):
            seen = await agent.wait_tunnel("up")
        # The agent woke the server and waited for it, polling status, rather than being up
        # at once; then it connected.
        assert seen[0] in {"waking", "connecting", "down"}, seen
        assert statuses(cloud, "POST", "/wake") == [200]
        assert len(statuses(cloud, "GET", "/status")) >= 2
        assert await desired_count(cloud) == 1
        assert cloud.fargate.starts == 1
        assert cloud.fargate.task is not None
        server = cloud.fargate.task.process
        assert server is not None
        health = await agent.health()
        assert health["tunnel"] == "up"
        assert health["connects"] == 1
        assert health["server"] == f"127.0.0.1:{cloud.server_port}"

        # Plain HTTP (httpx through the proxy).
        traffic_started = time.time()
        size = 3_000_000
        async with proxy_client(agent) as http:
            echo = await http.get(f"http://origin.test:{origin.port}/echo?via=agent")
            stream = await http.get(f"http://origin.test:{origin.port}/stream?n={size}")
        assert echo.status_code == 200
        assert echo.json()["target"] == "/echo?via=agent"
        assert ["via", "1.1 fluidity"] in [[n.lower(), v] for n, v in echo.json()["headers"]]
        assert stream.status_code == 200
        assert hashlib.sha256(stream.content).hexdigest() == pattern_sha256(size)

        # HTTPS through CONNECT: curl verifies the origin's certificate end to end.
        code, out, err = await curl(
            "-x", agent.proxy, "--cacert", str(ca_file), f"https://origin.test:{secure.port}/echo"
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["method"] == "GET"
        assert secure.connections == 1

        # A WebSocket, held open while the server's metrics reach CloudWatch.
        url = f"ws://origin.test:{ws_origin.port}/chat"
        async with proxied_websocket(agent.port, url, subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            await ws.send("hello through the tunnel")
            assert await ws.receive() == "hello through the tunnel"
            await ws.send(b"\x00\x01binary")
            assert await ws.receive() == b"\x00\x01binary"
            with trio.fail_after(15):
                await until(lambda: _at_least(cloud, "ActiveConnections", 1))
            assert await ws.close() == (1000, "")
        assert await metric_names(cloud) >= {"ActiveConnections", "LastActivityEpochSeconds"}
        with trio.fail_after(15):
            await until(lambda: _at_least(cloud, "LastActivityEpochSeconds", traffic_started))

        # SIGTERM: the agent exits cleanly and stops the server on its way out.
        assert statuses(cloud, "POST", "/kill") == []
        with trio.fail_after(30):
            code = await stop_process(agent.process)
        assert code == 0
        assert statuses(cloud, "POST", "/kill") == [200]
        assert await desired_count(cloud) == 0
        with trio.fail_after(15):
            await until(lambda: cloud.fargate.task is None)
        assert cloud.fargate.stops == 1
        assert server.returncode == 0, "the server drained and exited cleanly on SIGTERM"
        assert statuses(cloud, "POST", "/wake") == [200]


async def _at_least(cloud: LocalCloud, name: str, value: float) -> bool:
    highest = await metric_maximum(cloud, name)
    return highest is not None and highest >= value


# -- sleeping and waking -----------------------------------------------------------------------


def sleep_checks(cloud: LocalCloud) -> list[Firing]:
    return [f for f in cloud.scheduler.firings if f.schedule == SLEEP_CHECK]


def action(firing: Firing) -> str:
    return str(firing.result["action"])


def reason(firing: Firing) -> str:
    return str(firing.result["reason"])


def describe(firings: list[Firing], since: float) -> str:
    """The Sleep checks, timed from `since`, for assertion messages."""
    return "\n".join(f"  {f.at - since:+6.2f} s {action(f)}: {reason(f)}" for f in firings)


async def wait_slept(cloud: LocalCloud) -> Firing:
    """The first Sleep check that stopped the server (waiting for it if need be)."""
    while True:
        for firing in sleep_checks(cloud):
            if action(firing) == "slept":
                return firing
        await cloud.scheduler.wait_firing()


# At time scale 300 a cloud minute is 0.2 s: the Sleep check (rate(5 minutes)) runs every
# second, the idle threshold (15 min) is 3 s and the grace period after a wake (10 min) 2 s.
@pytest.mark.cloud(time_scale=300)
async def test_idle_server_sleeps_after_the_threshold_and_not_before(cloud: LocalCloud) -> None:
    threshold = cloud_seconds(cloud, "IdleThresholdMinutes")
    assert (threshold, cloud_seconds(cloud, "WakeGraceMinutes")) == (3.0, 2.0)

    def for_activity(firing: Firing) -> bool:
        return action(firing) == "kept_awake" and "grace" not in reason(firing)

    async with http_origin() as origin, running_agent(cloud) as agent:
        # Traffic from the start (the first request waits for the tunnel), until the Sleep
        # check has twice kept the server up for its activity rather than for the grace.
        started = time.time()
        async with proxy_client(agent) as http:
            with trio.fail_after(30):
                while True:
                    response = await http.get(f"http://origin.test:{origin.port}/echo")
                    # The server's last activity is the end of the last response.
                    quiet, quiet_wall = trio.current_time(), time.time()
                    assert response.status_code == 200
                    if sum(map(for_activity, sleep_checks(cloud))) >= 2:
                        break
                    await trio.sleep(0.2)

        with trio.fail_after(threshold + 10):
            slept = await wait_slept(cloud)
        checks = sleep_checks(cloud)
        story = describe(checks, since=quiet)
        awake = [f for f in checks if action(f) != "skipped"]
        # Before the wake the service was stopped (skipped); the first check after it kept
        # the server up for the grace period; all did until the one that stopped it.
        assert all(action(f) == "skipped" for f in checks[: checks.index(awake[0])]), story
        assert action(awake[0]) == "kept_awake", story
        assert "grace period" in reason(awake[0]), story
        assert awake[-1] is slept, story
        assert all(action(f) == "kept_awake" for f in awake[:-1]), story
        # Not before the threshold: the checks of the quiet period kept it up for the recent
        # activity, and the one that stopped it saw the last activity at least that old.
        quiet_checks = [f for f in awake[:-1] if f.at > quiet]
        assert len(quiet_checks) >= 2, story
        assert all("last activity" in reason(f) or "active" in reason(f) for f in quiet_checks)
        # ActiveConnections is read in whole periods (1 s here), so a period with the last
        # request in it can keep the server up to a period and a check longer.
        assert quiet + threshold - 0.1 <= slept.at <= quiet + threshold + 3.5, story
        assert reason(slept).startswith("idle: no active connections"), story
        assert slept.result["idle_seconds"] >= threshold, story
        assert slept.result["active_connections"] == 0, story
        assert started <= slept.result["last_activity_epoch"] <= quiet_wall + 0.1, story

        # Sleep scaled the service to 0: the server drains and exits, and the agent, seeing
        # the service stopping, goes asleep without waking it again.
        assert await desired_count(cloud) == 0
        with trio.fail_after(15):
            await until(lambda: cloud.fargate.task is None)
            await agent.wait_tunnel("asleep")
        assert cloud.fargate.stops == 1
        assert statuses(cloud, "POST", "/wake") == [200]


@pytest.mark.cloud(time_scale=300)
async def test_a_request_wakes_the_sleeping_server(cloud: LocalCloud) -> None:
    async with http_origin() as origin, running_agent(cloud) as agent:
        with trio.fail_after(30):
            await agent.wait_tunnel("up")
            # Nobody uses it: a Sleep check stops it once the grace and idle threshold pass.
            slept = await wait_slept(cloud)
            await agent.wait_tunnel("asleep")
            await until(lambda: cloud.fargate.task is None)
        assert reason(slept).startswith("idle:")
        # Asleep, the agent leaves the server alone while Sleep checks go on...
        seen = len(sleep_checks(cloud))
        with trio.fail_after(15):
            while len(sleep_checks(cloud)) < seen + 2:
                await cloud.scheduler.wait_firing()
        assert (await agent.health())["tunnel"] == "asleep"
        asleep = await scrape(agent.port)
        assert asleep.get("fluidity_agent_tunnel_state", state="asleep") == 1
        assert asleep.get("fluidity_agent_link_up") == 0
        assert asleep.get("fluidity_agent_wake_duration_seconds_count") == 1
        assert statuses(cloud, "POST", "/wake") == [200]
        assert (cloud.fargate.starts, cloud.fargate.stops) == (1, 1)

        # ...until a request comes: it waits while the agent wakes the server, then succeeds.
        async with proxy_client(agent) as http:
            with trio.fail_after(30):
                response = await http.get(f"http://origin.test:{origin.port}/echo?woken=1")
        assert response.status_code == 200
        assert response.json()["target"] == "/echo?woken=1"
        assert statuses(cloud, "POST", "/wake") == [200, 200]
        assert cloud.fargate.starts == 2
        health = await agent.health()
        assert health["tunnel"] == "up"
        assert health["connects"] == 2
        # The wake that request caused is timed, and the new link counts as a reconnect.
        woken = await scrape(agent.port)
        assert woken.get("fluidity_agent_wake_duration_seconds_count") == 2
        second_wake = woken.delta(asleep, "fluidity_agent_wake_duration_seconds_sum")
        assert 0 < second_wake < 30
        assert woken.get("fluidity_agent_reconnects_total") == 1
        assert woken.get("fluidity_agent_link_up") == 1
        assert woken.get("fluidity_agent_wake_failures_total") == 0
        assert woken.get("fluidity_agent_requests_total", kind="http", outcome="2xx") == 1


async def test_daily_kill_stops_a_busy_server_and_the_agent_recovers(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        http_origin() as origin,
        websocket_origin() as ws_origin,
        running_agent(cloud) as agent,
    ):
        server = await server_process(cloud, agent)
        url = f"ws://origin.test:{ws_origin.port}/"
        async with proxied_websocket(agent.port, url) as ws:
            await ws.send("busy")
            assert await ws.receive() == "busy"

            assert [f.schedule for f in cloud.scheduler.firings].count(DAILY_KILL) == 0
            result = await cloud.scheduler.fire(DAILY_KILL)
            assert result["action"] == "killed"
            assert result["state"] == "stopping"
            assert await desired_count(cloud) == 0
            # The server drains (GoAway); its shutdown grace then ends the open WebSocket, and
            # the agent closes the client's side with 1011 rather than dropping it.
            with trio.fail_after(20), pytest.raises(ConnectionError):
                await _receive_until_closed(ws)
            assert ws.close_code == 1011
        with trio.fail_after(20):
            assert await server.wait() == 0
            await until(lambda: cloud.fargate.task is None)
            await agent.wait_tunnel("asleep")
        assert cloud.fargate.stops == 1
        assert (await agent.health())["status"] == "ok"
        assert statuses(cloud, "POST", "/wake") == [200]

        # The next request wakes the server again and goes through.
        async with proxy_client(agent) as http:
            with trio.fail_after(30):
                response = await http.get(f"http://origin.test:{origin.port}/echo")
        assert response.status_code == 200
        assert statuses(cloud, "POST", "/wake") == [200, 200]
        assert cloud.fargate.starts == 2
        assert (await agent.health())["tunnel"] == "up"

    output = capsys.readouterr().out
    print(output)  # kept for the report of a failure
    assert "WebSocket relay ended" in output
    assert AGENT_BUG not in output


async def _receive_until_closed(ws: ProxiedWebSocket) -> None:
    while True:
        await ws.receive()


@pytest.mark.cloud(start_delay=3.0)
async def test_the_wake_is_visible_in_healthz_the_status_page_and_fluidity_status(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    health: dict[str, Any] = {}

    async def woken_and_polled() -> bool:
        nonlocal health
        health = await agent.health()
        return bool(health.get("wake", {}).get("server_state"))

    async with running_agent(cloud) as agent:
        with trio.fail_after(30):
            await until(woken_and_polled)  # the wake call answered: the state is known
            async with httpx2.AsyncClient(trust_env=False) as http:  # to the agent itself
                page = (await http.get(f"{agent.proxy}/")).text
        assert health["tunnel"] == "waking"
        assert health["wake"]["elapsed_seconds"] >= 0
        assert health["wake"]["server_state"] in {"stopped", "starting"}
        assert health["server_state"] == health["wake"]["server_state"]
        assert "waking the server" in page
        assert 'http-equiv="refresh"' in page, "the page reloads itself while the server wakes"
        with trio.fail_after(30):
            await agent.wait_tunnel("up")
        config = tmp_path / "agent.yaml"
        config.write_text(
            json.dumps(
                {
                    "listen_port": agent.port,
                    "api_url": cloud.gateway_url,
                    "api_key": cloud.settings.api_key,
                    "ca_cert": cloud.cert("ca.pem"),
                    "client_cert": cloud.cert("client.pem"),
                    "client_key": cloud.cert("client-key.pem"),
                }
            )
        )
        result = await trio.run_process(
            [sys.executable, "-m", "fluidity", "status", "--config", str(config)],
            capture_stdout=True,
            check=False,
        )
        out = result.stdout.decode()
        assert result.returncode == 0, out
        assert "up: requests go through the tunnel" in out
        assert "server (control plane): running at 127.0.0.1, task RUNNING" in out


# -- routing: direct traffic never wakes the server ------------------------------------------


# Time scale 300: the server sleeps a few seconds after the agent's first wake.
@pytest.mark.cloud(time_scale=300)
async def test_direct_traffic_does_not_wake_the_sleeping_server(cloud: LocalCloud) -> None:
    async with (
        http_origin() as origin,
        running_agent(cloud, "--routes", "direct 127.0.0.0/8") as agent,
    ):
        with trio.fail_after(30):
            await agent.wait_tunnel("up")
            await wait_slept(cloud)
            await agent.wait_tunnel("asleep")
            await until(lambda: cloud.fargate.task is None)
        # (Usually one wake; two if a Sleep check stopped the cold-starting server.)
        wakes, starts = statuses(cloud, "POST", "/wake"), cloud.fargate.starts

        async with proxy_client(agent) as http:
            with trio.fail_after(30):
                for i in range(3):
                    response = await http.get(f"http://127.0.0.1:{origin.port}/echo?direct={i}")
                    assert response.status_code == 200
                    assert response.json()["target"] == f"/echo?direct={i}"
            # Served by the agent itself: no wake call, no task, the tunnel still asleep.
            assert (await agent.health())["tunnel"] == "asleep"
            assert statuses(cloud, "POST", "/wake") == wakes
            assert (cloud.fargate.starts, cloud.fargate.task) == (starts, None)

            # The same origin by a name no rule matches goes through the tunnel: that wakes it.
            with trio.fail_after(30):
                response = await http.get(f"http://origin.test:{origin.port}/echo?tunnel=1")
        assert response.status_code == 200
        assert statuses(cloud, "POST", "/wake") == [*wakes, 200]
        assert cloud.fargate.starts == starts + 1
