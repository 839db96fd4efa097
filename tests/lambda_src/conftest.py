"""Fixtures: a moto AWS (ECS cluster, Fargate service, VPC, CloudWatch) and a settable clock.

moto's ECS has no scheduler: UpdateService never starts or stops tasks (and sets runningCount
to the new desired count), tasks have no createdAt, and awsvpc tasks crash moto 5.2. `Cloud`
plays the scheduler: it starts tasks with RunTask (group "service:<name>", as ECS does) and
sets what moto leaves out (lastStatus, createdAt, the ENI attachment, the service's counts)
on moto's own models. Everything the handlers read still goes through boto3 and moto.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ecs.models import ecs_backends
from moto.moto_api import state_manager

LAMBDA_SRC = Path(__file__).resolve().parents[2] / "lambda_src"
if str(LAMBDA_SRC) not in sys.path:
    sys.path.insert(0, str(LAMBDA_SRC))

from fluidity_lambda import common  # noqa: E402

REGION = "us-east-1"
CLUSTER = "fluidity"
SERVICE = "fluidity-server"
NAMESPACE = "Fluidity"
#: The tests' "now": a fixed instant, so every timestamp is exact.
NOW = dt.datetime(2025, 6, 2, 12, 0, 30, tzinfo=dt.UTC).timestamp()


class Clock:
    """What `common.now` returns; tests move it."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials, a region, the handlers' variables; nothing from the real environment."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_ECS",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_CLOUDWATCH",
        "IDLE_THRESHOLD_MINUTES",
        "WAKE_GRACE_MINUTES",
        "METRIC_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # 0.2 s a test, and unused
    monkeypatch.setenv("CLUSTER_NAME", CLUSTER)
    monkeypatch.setenv("SERVICE_NAME", SERVICE)
    common.reset()
    yield
    common.reset()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The handlers' clock, at NOW."""
    fake = Clock(NOW)
    monkeypatch.setattr(common, "now", fake)
    return fake


class Cloud:
    """The AWS side of a deployment in moto, and the ECS scheduler moto lacks."""

    def __init__(self) -> None:
        self.ecs = boto3.client("ecs", region_name=REGION)
        self.ec2 = boto3.client("ec2", region_name=REGION)
        self.cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"][
            "SubnetId"
        ]
        self.ecs.create_cluster(clusterName=CLUSTER)
        # Not awsvpc: moto 5.2 fails creating awsvpc tasks; `start_task` attaches the ENI.
        self.ecs.register_task_definition(
            family=SERVICE,
            containerDefinitions=[{"name": "server", "image": "fluidity", "memory": 512}],
        )
        self.service_arn = self.ecs.create_service(
            cluster=CLUSTER,
            serviceName=SERVICE,
            taskDefinition=SERVICE,
            desiredCount=0,
            launchType="FARGATE",
        )["service"]["serviceArn"]
        # moto stamps the deployment with the wall clock; put it well before the tests' NOW.
        self.set_deployment_time(NOW - 86400)

    # -- moto's models ----------------------------------------------------------------------

    @property
    def _ecs_backend(self) -> Any:
        return ecs_backends[DEFAULT_ACCOUNT_ID][REGION]

    @property
    def _service(self) -> Any:
        return self._ecs_backend.services[f"{CLUSTER}:{SERVICE}"]

    def _task(self, arn: str) -> Any:
        return self._ecs_backend.tasks[CLUSTER][arn]

    # -- the scheduler's part ---------------------------------------------------------------

    def set_counts(
        self, desired: int | None = None, running: int | None = None, pending: int | None = None
    ) -> None:
        """Set the service's counts as ECS would report them."""
        if desired is not None:
            self._service.desired_count = desired
        if running is not None:
            self._service.running_count = running
        if pending is not None:
            self._service.pending_count = pending

    def set_deployment_time(self, at: float) -> None:
        when = dt.datetime.fromtimestamp(at, dt.UTC)
        for deployment in self._service.deployments:
            deployment["createdAt"] = deployment["updatedAt"] = when

    def start_task(
        self,
        status: str = "RUNNING",
        created: float | None = None,
        started: float | None = None,
        eni: str | None = "public",
    ) -> str:
        """A task of the service in `status`; `eni`: "public" (with an Elastic IP),
        "private", "missing" (an ENI id EC2 does not know), or None (no ENI attachment)."""
        arn: str = self.ecs.run_task(
            cluster=CLUSTER,
            taskDefinition=SERVICE,
            launchType="FARGATE",
            group=f"service:{SERVICE}",
            startedBy="ecs-svc/0123456789",
        )["tasks"][0]["taskArn"]
        task = self._task(arn)
        task.last_status = status
        if created is not None:
            task.created_at = dt.datetime.fromtimestamp(created, dt.UTC)
        if started is not None:
            task.started_at = dt.datetime.fromtimestamp(started, dt.UTC)
        if eni is not None:
            task.attachments = [self._eni_attachment(eni)]
        return arn

    def _eni_attachment(self, kind: str) -> dict[str, Any]:
        if kind == "missing":
            eni_id, private_ip = "eni-0000000000000dead", "10.0.1.99"
        else:
            interface = self.ec2.create_network_interface(SubnetId=self.subnet)
            eni_id = interface["NetworkInterface"]["NetworkInterfaceId"]
            private_ip = interface["NetworkInterface"]["PrivateIpAddress"]
            if kind == "public":
                allocation = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
                self.ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=eni_id)
        return {
            "id": "attachment-1",
            "type": "ElasticNetworkInterface",
            "status": "ATTACHED",
            "details": [
                {"name": "subnetId", "value": self.subnet},
                {"name": "networkInterfaceId", "value": eni_id},
                {"name": "privateIPv4Address", "value": private_ip},
            ],
        }

    def public_ip(self, task_arn: str) -> str:
        eni_id = next(
            d["value"]
            for d in self._task(task_arn).attachments[0]["details"]
            if d["name"] == "networkInterfaceId"
        )
        interface = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])
        address: str = interface["NetworkInterfaces"][0]["Association"]["PublicIp"]
        return address

    def private_ip(self, task_arn: str) -> str:
        address: str = next(
            d["value"]
            for d in self._task(task_arn).attachments[0]["details"]
            if d["name"] == "privateIPv4Address"
        )
        return address

    def stop_task(self, arn: str) -> None:
        self.ecs.stop_task(cluster=CLUSTER, task=arn, reason="test")

    # -- reading back -----------------------------------------------------------------------

    def desired_count(self) -> int:
        service = self.ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
        count: int = service["desiredCount"]
        return count

    def woken_tag(self) -> str | None:
        tags = self.ecs.list_tags_for_resource(resourceArn=self.service_arn)["tags"]
        return next((t["value"] for t in tags if t["key"] == common.WOKEN_AT_TAG), None)

    def tag_woken(self, at: float) -> None:
        self.ecs.tag_resource(
            resourceArn=self.service_arn,
            tags=[{"key": common.WOKEN_AT_TAG, "value": str(int(at))}],
        )

    # -- the server's metrics ---------------------------------------------------------------

    def put_metrics(
        self,
        at: float,
        active: float,
        last_activity: float | None,
        service: str = SERVICE,
    ) -> None:
        """One emission of the server's two metrics, timestamped `at`."""
        when = dt.datetime.fromtimestamp(at, dt.UTC)
        dimensions = [{"Name": "Service", "Value": service}]
        data: list[dict[str, Any]] = [
            {
                "MetricName": "ActiveConnections",
                "Dimensions": dimensions,
                "Timestamp": when,
                "Value": active,
                "Unit": "Count",
            }
        ]
        if last_activity is not None:
            data.append(
                {
                    "MetricName": "LastActivityEpochSeconds",
                    "Dimensions": dimensions,
                    "Timestamp": when,
                    "Value": last_activity,
                    "Unit": "Seconds",
                }
            )
        self.cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data)

    def metric_count(self) -> int:
        return len(list(cloudwatch_backends[DEFAULT_ACCOUNT_ID][REGION].get_all_metrics()))


@functools.cache
def _shared_session() -> boto3.Session:
    return boto3.Session()


@pytest.fixture
def cloud(clock: Clock) -> Iterator[Cloud]:
    """moto with the deployment's cluster and service (desired count 0), tasks frozen in place."""
    # Tasks keep the lastStatus a test gives them (moto would advance it on every describe).
    state_manager.set_transition(
        model_name="ecs::task", transition={"progression": "manual", "times": 10**9}
    )
    try:
        with mock_aws():
            # One boto3 session for all tests (moto clears the default one): a new session
            # parses botocore's endpoint data again, a third of each test's time.
            boto3.DEFAULT_SESSION = _shared_session()
            yield Cloud()
    finally:
        state_manager.unset_transition("ecs::task")


def api_event(method: str = "POST", path: str = "/wake") -> dict[str, Any]:
    """An API Gateway REST proxy-integration event, as much of it as the handlers look at."""
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"x-api-key": "redacted"},
        "queryStringParameters": None,
        "requestContext": {"resourcePath": path, "httpMethod": method, "stage": "prod"},
        "body": None,
        "isBase64Encoded": False,
    }


def call_api(handler: Any, method: str = "POST", path: str = "/wake") -> tuple[int, dict[str, Any]]:
    """Invoke `handler` as API Gateway would; the status code and the decoded JSON body."""
    response = handler(api_event(method, path), None)
    assert set(response) == {"statusCode", "headers", "body"}
    assert response["headers"] == {"content-type": "application/json"}
    body: dict[str, Any] = json.loads(response["body"])
    return response["statusCode"], body
