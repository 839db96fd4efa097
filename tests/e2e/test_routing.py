"""Routing in the local cloud: traffic a rule sends direct never wakes a sleeping server."""

from __future__ import annotations

import pytest
import trio

from fluidity.localcloud.cloud import LocalCloud
from tests.support.origins import http_origin

from .conftest import proxy_client, running_agent, statuses, until
from .test_lifecycle import wait_slept


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
