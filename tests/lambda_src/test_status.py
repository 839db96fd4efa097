"""Status: every state, the address lookup (task -> ENI -> EC2) and its fallbacks, errors."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from fluidity_lambda import common, status

from tests.lambda_src.conftest import NOW, SERVICE, Cloud, call_api

STATUS_FIELDS = {
    "state",
    "desired_count",
    "running_count",
    "pending_count",
    "address",
    "task_status",
    "estimated_seconds",
}


def test_stopped(cloud: Cloud) -> None:
    assert status.handler({}, None) == {
        "state": "stopped",
        "desired_count": 0,
        "running_count": 0,
        "pending_count": 0,
        "address": None,
        "task_status": None,
        "estimated_seconds": None,
    }


def test_api_event_gets_the_same_body_as_json(cloud: Cloud) -> None:
    code, body = call_api(status.handler, "GET", "/status")
    assert code == 200
    assert body == status.handler({}, None)
    assert set(body) == STATUS_FIELDS


def test_starting_before_any_task_exists(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=0, pending=0)
    body = status.handler({}, None)
    assert body["state"] == "starting"
    assert (body["task_status"], body["address"], body["estimated_seconds"]) == (None, None, 60)


@pytest.mark.parametrize(
    ("task_status", "age", "estimate"),
    [("PROVISIONING", 0, 60), ("PENDING", 20, 40), ("PENDING", 59.5, 1), ("ACTIVATING", 300, 0)],
)
def test_starting_counts_down_from_the_task_creation(
    cloud: Cloud, task_status: str, age: float, estimate: int
) -> None:
    cloud.set_counts(desired=1, running=0, pending=1)
    cloud.start_task(status=task_status, created=NOW - age)
    body = status.handler({}, None)
    assert body == {
        "state": "starting",
        "desired_count": 1,
        "running_count": 0,
        "pending_count": 1,
        "address": None,
        "task_status": task_status,
        "estimated_seconds": estimate,
    }


def test_running_reports_the_public_ip(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=1, pending=0)
    task = cloud.start_task(created=NOW - 120, started=NOW - 60, eni="public")
    body = status.handler({}, None)
    assert body == {
        "state": "running",
        "desired_count": 1,
        "running_count": 1,
        "pending_count": 0,
        "address": cloud.public_ip(task),
        "task_status": "RUNNING",
        "estimated_seconds": None,
    }
    assert body["address"] != cloud.private_ip(task)


def test_running_without_public_ip_reports_the_private_ip(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=1)
    task = cloud.start_task(eni="private")
    assert status.handler({}, None)["address"] == cloud.private_ip(task)


def test_vanished_eni_falls_back_to_the_attachment_private_ip(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=1)
    task = cloud.start_task(eni="missing")
    assert status.handler({}, None)["address"] == cloud.private_ip(task) == "10.0.1.99"


def test_task_without_eni_attachment_has_no_address(cloud: Cloud) -> None:
    # Outside awsvpc mode (never on Fargate) ECS reports no ENI; moto reports no container IPs.
    cloud.set_counts(desired=1, running=1)
    cloud.start_task(eni=None)
    body = status.handler({}, None)
    assert (body["state"], body["address"]) == ("running", None)


def test_container_address_is_used_without_eni() -> None:
    task = {"containers": [{"networkInterfaces": [{"privateIpv4Address": "172.17.0.2"}]}]}
    assert common.task_address(task) == "172.17.0.2"


def test_replacement_task_keeps_the_running_address(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=1, pending=1)
    old = cloud.start_task(status="RUNNING", created=NOW - 3600, eni="public")
    cloud.start_task(status="PENDING", created=NOW - 10, eni="private")
    body = status.handler({}, None)
    assert body["state"] == "running"
    assert body["task_status"] == "PENDING"  # the newest task's
    assert body["address"] == cloud.public_ip(old)


def test_stopping_while_the_task_drains(cloud: Cloud) -> None:
    cloud.set_counts(desired=0, running=1, pending=0)
    body = status.handler({}, None)
    assert (body["state"], body["address"], body["estimated_seconds"]) == ("stopping", None, None)


def test_stopping_while_a_task_is_still_listed(cloud: Cloud) -> None:
    cloud.set_counts(desired=0, running=0)
    cloud.start_task(status="DEACTIVATING")
    body = status.handler({}, None)
    assert (body["state"], body["task_status"]) == ("stopping", "DEACTIVATING")


def test_stopped_tasks_do_not_count(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=0)
    cloud.stop_task(cloud.start_task())
    body = status.handler({}, None)
    assert (body["state"], body["task_status"]) == ("starting", None)


def test_other_services_tasks_do_not_count(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=0)
    cloud.ecs.run_task(
        cluster="fluidity", taskDefinition=SERVICE, launchType="FARGATE", group="service:other"
    )
    assert status.handler({}, None)["state"] == "starting"


# -- errors ---------------------------------------------------------------------------------


def test_missing_service(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_NAME", "nope")
    with pytest.raises(common.ServiceNotFoundError, match=r"'nope'.*MISSING.*SERVICE_NAME"):
        status.handler({}, None)
    code, body = call_api(status.handler, "GET", "/status")
    assert code == 500
    assert body["error"] == "service_not_found"
    assert "'nope'" in body["message"]


def test_missing_cluster(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_NAME", "nope")
    with pytest.raises(common.ServiceNotFoundError, match="ClusterNotFoundException"):
        status.handler({}, None)


def test_deleted_service(cloud: Cloud) -> None:
    cloud.ecs.delete_service(cluster="fluidity", service=SERVICE)
    with pytest.raises(common.ServiceNotFoundError):
        status.handler({}, None)


@pytest.mark.parametrize("variable", ["CLUSTER_NAME", "SERVICE_NAME"])
def test_missing_configuration(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.delenv(variable)
    with pytest.raises(common.ConfigError, match=variable):
        status.handler({}, None)
    code, body = call_api(status.handler, "GET", "/status")
    assert code == 500
    assert body["error"] == "config_error"
    assert body["message"].startswith(f"{variable} is not set")


def test_ec2_access_denied_is_an_error_not_a_wrong_address(cloud: Cloud) -> None:
    # moto enforces no IAM here, so the refusal is stubbed.
    cloud.set_counts(desired=1, running=1)
    cloud.start_task(eni="public")
    with Stubber(common.client("ec2")) as ec2:
        ec2.add_client_error("describe_network_interfaces", "UnauthorizedOperation", "denied")
        code, body = call_api(status.handler, "GET", "/status")
    assert code == 502
    assert body["error"] == "aws_error"
    assert "EC2 DescribeNetworkInterfaces failed: UnauthorizedOperation" in body["message"]


def test_ecs_throttling_is_503(cloud: Cloud) -> None:
    with Stubber(common.client("ecs")) as ecs:
        ecs.add_client_error("describe_services", "ThrottlingException", "Rate exceeded")
        code, body = call_api(status.handler, "GET", "/status")
    assert (code, body["error"]) == (503, "throttled")


def test_unreachable_endpoint(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(**kwargs: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://ecs.us-east-1.amazonaws.com")

    monkeypatch.setattr(common.client("ecs"), "describe_services", unreachable)
    with pytest.raises(common.AwsError, match="EndpointConnectionError"):
        status.handler({}, None)
    code, body = call_api(status.handler, "GET", "/status")
    assert (code, body["error"]) == (502, "aws_error")


def test_unexpected_client_error_shape_still_answers(cloud: Cloud) -> None:
    with Stubber(common.client("ecs")) as ecs:
        ecs.add_client_error("describe_services", "", "")
        with pytest.raises(common.AwsError, match="Unknown"):
            status.handler({}, None)
