"""End-to-end fixtures: a fresh local cloud per test, the real agent, and ways to watch them.

Every test gets its own `run_local_cloud` in tmp_path: moto as AWS, the API Gateway, Scheduler
and Fargate stand-ins running the real Lambda handlers from the built zip, and real
`python -m fluidity.server` processes started by the Fargate stand-in. `@pytest.mark.cloud(...)`
overrides the `CloudSettings` of one test (its time scale, usually).

These tests are not part of plain `pytest` (`norecursedirs` in pyproject.toml skips any `e2e`
directory while recursing); run them with `nox -s e2e` or `pytest tests/e2e`.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx2
import pytest
import trio

import fluidity.localcloud.cloud as cloud_module
from fluidity.deploy.bundle import CFN_DIR
from fluidity.localcloud.cloud import CloudSettings, LocalCloud, run_local_cloud
from fluidity.localcloud.template import ScheduleSpec, load_template, parameter_default
from fluidity.localcloud.up import start_agent, stop_process
from tests.support.processes import SERVER_TEST_ENV

#: What every test's cloud uses unless its `cloud` marker says otherwise. At time scale 60 a
#: cloud minute is a second: the idle threshold (15 min) is 15 s and the grace period 10 s, so
#: the Sleep schedule (every 5 s) never stops a server during a test that does not wait for it.
CLOUD_DEFAULTS: dict[str, Any] = {"time_scale": 60.0, "start_delay": 0.5, "stop_timeout": 5.0}
#: The daily Kill is `cron(0 23 * * ? *)` in cloud time, which runs time_scale times faster
#: than the wall clock from the moment the cloud starts: at some times of day it would fire in
#: the middle of a test. Here it never fires by itself; tests fire it
#: (`cloud.scheduler.fire("DailyKillSchedule")`). A year in the past has no next fire time.
DAILY_KILL = "DailyKillSchedule"
NEVER = "cron(0 23 * * ? 1970)"
POLL = 0.05
log = logging.getLogger("tests.e2e")
#: What the agent logs when serving a client connection failed unexpectedly (a bug).
AGENT_BUG = "error serving a client connection"


#: pytest-timeout's limit for each test here, instead of pyproject.toml's (tests/conftest.py
#: caps the trio part at three quarters of it): a local cloud starts, real processes run, and
#: some tests wait out idle thresholds in cloud time.
E2E_TIMEOUT = 300.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cloud(**settings): CloudSettings overrides for the test's local cloud"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT))


_original_schedules = cloud_module.schedules


def _schedules_without_automatic_daily_kill(template: dict[str, Any]) -> list[ScheduleSpec]:
    specs = _original_schedules(template)
    return [attrs.evolve(s, expression=NEVER) if s.name == DAILY_KILL else s for s in specs]


@pytest.fixture
async def cloud(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[LocalCloud]:
    """A fresh local cloud for this test; the servers' logs are printed at the end (pytest
    shows them, with the cloud's log records and the agent's output, when the test fails)."""
    caplog.set_level(logging.INFO)
    for noisy in ("werkzeug", "botocore", "httpx2"):  # moto's access log, every request
        caplog.set_level(logging.WARNING, logger=noisy)
    marker = request.node.get_closest_marker("cloud")
    settings = CloudSettings(
        **{**CLOUD_DEFAULTS, "server_env": SERVER_TEST_ENV, **(marker.kwargs if marker else {})}
    )
    monkeypatch.setattr(cloud_module, "schedules", _schedules_without_automatic_daily_kill)
    workdir = tmp_path / "cloud"
    try:
        async with run_local_cloud(settings, workdir) as local:
            yield local
    finally:
        for path in sorted(workdir.glob("*.log")):
            print(f"--- {path.name} ---\n{path.read_text(errors='replace')}")


def lambda_parameter(name: str) -> Any:
    """The default of a cfn/lambda.yaml parameter, which the local cloud uses."""
    return parameter_default(load_template(CFN_DIR / "lambda.yaml"), name)


def cloud_seconds(cloud: LocalCloud, parameter: str) -> float:
    """Real seconds of a cfn/lambda.yaml parameter in minutes (IdleThresholdMinutes...) at the
    cloud's time scale, as the Lambda functions see it."""
    return float(lambda_parameter(parameter)) * 60 / cloud.settings.time_scale


# -- the agent ---------------------------------------------------------------------------------


@attrs.define
class Agent:
    process: trio.Process
    port: int

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self) -> dict[str, Any]:
        """GET /healthz on the agent (200 when up or asleep, 503 otherwise; JSON either way)."""
        async with httpx2.AsyncClient(trust_env=False, timeout=10) as http:
            body: dict[str, Any] = (await http.get(f"{self.proxy}/healthz")).json()
        return body

    async def wait_tunnel(self, *states: str) -> list[str]:
        """Poll /healthz until the tunnel is in one of `states`; the states seen, in order
        (also logged, for the report of a failure). Bound it at the call site."""
        seen: list[str] = []
        while True:
            state = (await self.health())["tunnel"]
            if not seen or seen[-1] != state:
                log.info("agent tunnel: %s", state)
                seen.append(state)
            if state in states:
                return seen
            await trio.sleep(POLL)


@asynccontextmanager
async def running_agent(cloud: LocalCloud, *extra: str) -> AsyncIterator[Agent]:
    """The agent as `fluidity local up` starts it (`fluidity.localcloud.up.start_agent`: its
    output is printed with an [agent] prefix, shown for a failed test); SIGTERM when the block
    ends."""
    async with trio.open_nursery() as nursery:
        process, port = await start_agent(nursery, cloud, 0, list(extra))
        try:
            yield Agent(process, port)
        finally:
            await stop_process(process)


async def server_process(cloud: LocalCloud, agent: Agent) -> trio.Process:
    """Wait for the agent's tunnel to come up; the server process it reaches."""
    with trio.fail_after(30):
        await agent.wait_tunnel("up")
    assert cloud.fargate.task is not None
    server = cloud.fargate.task.process
    assert server is not None
    return server


@attrs.define
class LoggedAgent:
    """An agent whose output goes to a file, for tests that read what it says."""

    process: trio.Process
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@asynccontextmanager
async def logged_agent(cloud: LocalCloud, *extra: str) -> AsyncIterator[LoggedAgent]:
    """`python -m fluidity.agent` against the cloud, output to agent.log; no wait for ready
    (the agent may well exit first). SIGTERM when the block ends, if it still runs."""
    log_path = cloud.workdir / "agent.log"
    with open(log_path, "wb") as output:  # noqa: ASYNC230 - a local file, opened once
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "fluidity.agent", *cloud.agent_args(0), *extra],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agent = LoggedAgent(process, log_path)
    try:
        yield agent
    finally:
        await stop_process(process)
        print(f"--- agent output ---\n{agent.output()}")


# -- waiting and looking -----------------------------------------------------------------------


async def until(check: Callable[[], bool | Awaitable[bool]]) -> None:
    """Poll `check` until it is true. Bound it at the call site (trio.fail_after)."""
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await trio.sleep(POLL)


def statuses(cloud: LocalCloud, method: str, path: str) -> list[int]:
    """The HTTP statuses the API Gateway stand-in answered to `method path`, in order."""
    return [status for m, p, status in cloud.gateway.calls if (m, p) == (method, path)]


async def desired_count(cloud: LocalCloud) -> int:
    return await trio.to_thread.run_sync(cloud.aws.desired_count)


def proxy_client(agent: Agent, timeout: float = 30) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(proxy=agent.proxy, trust_env=False, timeout=timeout)


# The servers put their metrics into cfn/lambda.yaml's MetricsNamespace ("Fluidity"), with
# the dimension Service=<service name>, where the Sleep function reads them.


def _metric_maximum(cloud: LocalCloud, name: str) -> float | None:
    now = time.time()
    answer = cloud.aws.client("cloudwatch").get_metric_statistics(
        Namespace=lambda_parameter("MetricsNamespace"),
        MetricName=name,
        Dimensions=[{"Name": "Service", "Value": cloud.aws.service}],
        StartTime=now - 600,
        EndTime=now + 60,
        Period=60,
        Statistics=["Maximum"],
    )
    return max((float(p["Maximum"]) for p in answer["Datapoints"]), default=None)


async def metric_maximum(cloud: LocalCloud, name: str) -> float | None:
    """The highest value of the server's metric `name` in CloudWatch (moto) lately."""
    return await trio.to_thread.run_sync(_metric_maximum, cloud, name)


def _metric_names(cloud: LocalCloud) -> set[str]:
    answer = cloud.aws.client("cloudwatch").list_metrics(
        Namespace=lambda_parameter("MetricsNamespace"),
        Dimensions=[{"Name": "Service", "Value": cloud.aws.service}],
    )
    return {m["MetricName"] for m in answer["Metrics"]}


async def metric_names(cloud: LocalCloud) -> set[str]:
    return await trio.to_thread.run_sync(_metric_names, cloud)
