"""What goes wrong: a refused API key, a throttled API, a server that never starts, and a
server that dies in the middle of a download."""

from __future__ import annotations

import httpx2
import pytest
import trio

from fluidity.localcloud.cloud import LocalCloud
from tests.support.origins import http_origin, tcp_echo_origin

from .conftest import (
    AGENT_BUG,
    desired_count,
    logged_agent,
    proxy_client,
    running_agent,
    server_process,
    statuses,
    until,
)


async def test_a_wrong_api_key_stops_the_agent_with_a_clear_message(cloud: LocalCloud) -> None:
    key = "not-the-key-5f3a9c"
    async with logged_agent(cloud, "--api-key", key) as agent:
        with trio.fail_after(30):
            code = await agent.process.wait()
    output = agent.output()
    assert code == 1, output
    assert "refused the API key (403 from POST /wake)" in output
    assert "check api_key" in output
    assert key not in output, "the key itself is never logged"
    assert AGENT_BUG not in output
    assert "Traceback" not in output
    # Refused at the API Gateway: nothing was woken, nothing to kill, no retries.
    assert cloud.gateway.calls == [("POST", "/wake", 403)]
    assert await desired_count(cloud) == 0
    assert cloud.fargate.starts == 0


async def test_a_throttled_wake_is_retried_until_it_goes_through(cloud: LocalCloud) -> None:
    bucket = cloud.gateway.bucket
    rate = bucket.rate
    bucket.tokens, bucket.rate = 0.0, 0.0  # every call is throttled (429) for now
    async with http_origin() as origin, running_agent(cloud) as agent:
        with trio.fail_after(15):
            await until(lambda: statuses(cloud, "POST", "/wake").count(429) >= 2)
        assert (await agent.health())["tunnel"] == "waking"
        assert cloud.fargate.starts == 0
        bucket.rate = rate  # the throttling ends
        with trio.fail_after(30):
            await agent.wait_tunnel("up")
        wakes = statuses(cloud, "POST", "/wake")
        assert set(wakes[:-1]) == {429}, wakes
        assert wakes[-1] == 200
        assert 3 <= len(wakes) <= 6, "six tries at most"
        async with proxy_client(agent) as http:
            response = await http.get(f"http://origin.test:{origin.port}/echo")
        assert response.status_code == 200
        assert cloud.fargate.starts == 1


async def test_a_server_that_never_starts_makes_the_agent_give_up(cloud: LocalCloud) -> None:
    cloud.fargate.start_delay = 3600.0  # the task stays PROVISIONING
    started = trio.current_time()
    async with logged_agent(cloud, "--connection-timeout", "3") as agent:
        with trio.fail_after(30):
            code = await agent.process.wait()
    elapsed = trio.current_time() - started
    output = agent.output()
    assert code == 1, output
    assert "the server did not start within 3 s (connection_timeout)" in output
    assert "check the ECS service's events" in output
    assert "task PROVISIONING" in output, "it reported progress while it waited"
    assert 3 <= elapsed < 20
    assert statuses(cloud, "POST", "/wake") == [200]
    assert len(statuses(cloud, "GET", "/status")) >= 2
    assert cloud.fargate.starts == 0
    # Giving up, it stops the server it woke rather than leave it to the Sleep schedule.
    assert statuses(cloud, "POST", "/kill") == [200]
    assert await trio.to_thread.run_sync(cloud.aws.desired_count) == 0


async def test_a_server_killed_mid_download_is_replaced(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        http_origin() as origin,
        tcp_echo_origin() as echo,
        running_agent(cloud) as agent,
    ):
        server = await server_process(cloud, agent)
        # A CONNECT tunnel open at the same time, to see that it ends too.
        tunnel = await trio.open_tcp_stream("127.0.0.1", agent.port)
        async with tunnel:
            await tunnel.send_all(
                f"CONNECT origin.test:{echo.port} HTTP/1.1\r\n"
                f"Host: origin.test:{echo.port}\r\n\r\n".encode()
            )
            with trio.fail_after(10):
                head = await tunnel.receive_some(65536)
                assert head.startswith(b"HTTP/1.1 200 "), head
                await tunnel.send_all(b"ping")
                assert await tunnel.receive_some(65536) == b"ping"

            size = 1 << 30
            received = 0

            async def download_and_kill_the_server() -> None:
                nonlocal received
                url = f"http://origin.test:{origin.port}/stream?n={size}"
                async with proxy_client(agent) as http, http.stream("GET", url) as response:
                    assert response.status_code == 200
                    async for piece in response.aiter_raw():
                        received += len(piece)
                        if received >= 4_000_000 and server.returncode is None:
                            server.kill()  # SIGKILL: no drain, no GoAway

            with trio.fail_after(30), pytest.raises(httpx2.TransportError):
                await download_and_kill_the_server()
            assert 4_000_000 <= received < size

            # The CONNECT tunnel ends as well: closed (or reset), without the echo's clean end.
            with trio.fail_after(10):
                try:
                    rest = await tunnel.receive_some(65536)
                except trio.BrokenResourceError:
                    rest = b""
            assert rest == b""

        assert await server.wait() == -9
        # ECS (the Fargate stand-in) replaces the task: the service still wants one.
        with trio.fail_after(15):
            await until(lambda: cloud.fargate.starts == 2)
        assert cloud.fargate.stops == 1
        async with proxy_client(agent) as http:
            with trio.fail_after(30):
                response = await http.get(f"http://origin.test:{origin.port}/echo?after=kill")
        assert response.status_code == 200
        assert response.json()["target"] == "/echo?after=kill"
        health = await agent.health()
        assert health["tunnel"] == "up"
        assert health["connects"] == 2
        # The agent reconnected to the replacement by itself: no second wake.
        assert statuses(cloud, "POST", "/wake") == [200]
        assert await desired_count(cloud) == 1

    output = capsys.readouterr().out
    print(output)  # kept for the report of a failure
    assert f"tunnel to origin.test:{echo.port} failed: link lost" in output
    assert AGENT_BUG not in output
