"""The lifecycle client against the real handlers, loaded from the built zip, behind the
API Gateway stand-in, with ECS and CloudWatch in moto."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest
import trio
from moto import mock_aws

from fluidity.agent.lifecycle import AuthError, ControlPlane
from fluidity.localcloud.apigateway import ApiGateway
from fluidity.localcloud.lambdas import build_zip, load_handlers

KEY = "k3y"
CLUSTER, SERVICE = "fluidity", "fluidity-server"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
        "CLUSTER_NAME": CLUSTER,
        "SERVICE_NAME": SERVICE,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        ecs = boto3.client("ecs")
        ecs.create_cluster(clusterName=CLUSTER)
        ecs.register_task_definition(
            family="fluidity-server",
            containerDefinitions=[{"name": "server", "image": "fluidity", "memory": 512}],
        )
        ecs.create_service(
            cluster=CLUSTER, serviceName=SERVICE, taskDefinition="fluidity-server", desiredCount=0
        )
        yield


def desired_count() -> int:
    service = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])
    return int(service["services"][0]["desiredCount"])


@pytest.fixture
async def api_url(aws: None, tmp_path: Path) -> AsyncIterator[str]:
    handlers = load_handlers(build_zip(tmp_path / "lambda.zip"))
    api = ApiGateway(
        {("POST", "/wake"): handlers["wake"], ("GET", "/status"): handlers["status"],
         ("POST", "/kill"): handlers["kill"]},
        api_key=KEY,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        port = await nursery.start(api.serve)
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_wake_then_kill_moves_the_real_service(api_url: str) -> None:
    plane = ControlPlane(api_url, KEY, min_delay=0.01, max_delay=0.05)
    before = await plane.status()
    woke = await plane.wake()
    assert desired_count() == 1
    again = await plane.wake()
    killed = await plane.kill()
    assert before.state == "stopped"
    assert woke.action == "waking"
    assert woke.state == "starting"
    assert again.action in {"starting", "already_running"}
    assert desired_count() == 0
    assert killed.action == "killed"


async def test_wrong_key_never_reaches_the_handlers(api_url: str) -> None:
    with pytest.raises(AuthError):
        await ControlPlane(api_url, "wrong").wake()
    assert desired_count() == 0
