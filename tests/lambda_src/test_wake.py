"""Wake: 0 -> 1 only, idempotent, reports the state, records the wake time, errors."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from fluidity_lambda import common, wake

from tests.lambda_src.conftest import NOW, Clock, Cloud, call_api


def test_wakes_a_stopped_service(cloud: Cloud) -> None:
    body = wake.handler({}, None)
    assert cloud.desired_count() == 1
    assert body["action"] == "waking"
    assert body["state"] == "starting"
    assert body["desired_count"] == 1
    assert (body["address"], body["task_status"], body["estimated_seconds"]) == (None, None, 60)
    # (running_count is whatever ECS says; moto claims 1 right after UpdateService.)
    assert set(body) == {"action", *common.StatusBody.__annotations__}


def test_records_the_wake_time(cloud: Cloud, clock: Clock) -> None:
    wake.handler({}, None)
    assert cloud.woken_tag() == str(int(NOW))
    clock.at += 100
    wake.handler({}, None)  # already starting: the tag still moves
    assert cloud.woken_tag() == str(int(NOW + 100))


def test_api_event(cloud: Cloud) -> None:
    code, body = call_api(wake.handler, "POST", "/wake")
    assert code == 200
    assert (body["action"], body["state"], body["desired_count"]) == ("waking", "starting", 1)


def test_again_while_starting_changes_nothing(cloud: Cloud) -> None:
    wake.handler({}, None)
    cloud.set_counts(running=0, pending=1)
    cloud.start_task(status="PENDING", created=NOW - 15)
    body = wake.handler({}, None)
    assert cloud.desired_count() == 1
    assert body == {
        "action": "starting",
        "state": "starting",
        "desired_count": 1,
        "running_count": 0,
        "pending_count": 1,
        "address": None,
        "task_status": "PENDING",
        "estimated_seconds": 45,
    }


def test_already_running(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=1, pending=0)
    task = cloud.start_task(created=NOW - 600)
    body = wake.handler({}, None)
    assert cloud.desired_count() == 1
    assert body == {
        "action": "already_running",
        "state": "running",
        "desired_count": 1,
        "running_count": 1,
        "pending_count": 0,
        "address": cloud.public_ip(task),
        "task_status": "RUNNING",
        "estimated_seconds": None,
    }


def test_wakes_a_stopping_service(cloud: Cloud) -> None:
    cloud.set_counts(desired=0, running=1)
    body = wake.handler({}, None)
    assert cloud.desired_count() == 1
    assert (body["action"], body["state"]) == ("waking", "starting")


def test_concurrent_wakes_never_ask_for_more_than_one(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two calls that both saw desired count 0 both set 1: the second changes nothing."""
    stale = common.describe_service(common.config())
    assert stale["desiredCount"] == 0
    monkeypatch.setattr(common, "describe_service", lambda cfg: stale)
    assert wake.handler({}, None)["action"] == "waking"
    assert wake.handler({}, None)["action"] == "waking"
    assert cloud.desired_count() == 1


def test_leaves_a_larger_desired_count_alone(cloud: Cloud) -> None:
    cloud.set_counts(desired=2, running=0)
    body = wake.handler({}, None)
    assert cloud.desired_count() == 2
    assert (body["action"], body["desired_count"]) == ("starting", 2)


def test_wakes_even_if_the_wake_time_cannot_be_recorded(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # moto enforces no IAM, so the refusal is a stand-in.
    def refuse(**kwargs: Any) -> Any:
        error = {"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}
        raise ClientError(error, "TagResource")

    monkeypatch.setattr(common.client("ecs"), "tag_resource", refuse)
    assert wake.handler({}, None)["action"] == "waking"
    assert cloud.desired_count() == 1
    assert cloud.woken_tag() is None
    assert "could not record the wake time" in caplog.text
    assert "AccessDeniedException" in caplog.text


def test_missing_service(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_NAME", "nope")
    with pytest.raises(common.ServiceNotFoundError):
        wake.handler({}, None)
    code, body = call_api(wake.handler)
    assert (code, body["error"]) == (500, "service_not_found")


def test_update_refused(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: Any) -> Any:
        error = {"Error": {"Code": "AccessDeniedException", "Message": "no UpdateService"}}
        raise ClientError(error, "UpdateService")

    monkeypatch.setattr(common.client("ecs"), "update_service", refuse)
    code, body = call_api(wake.handler)
    assert code == 502
    assert body == {
        "error": "aws_error",
        "message": "ECS UpdateService failed: AccessDeniedException: no UpdateService",
    }
    assert cloud.desired_count() == 0


def test_throttled_list_tasks(cloud: Cloud) -> None:
    service = common.describe_service(common.config())
    with Stubber(common.client("ecs")) as ecs:
        ecs.add_response("describe_services", {"services": [service], "failures": []})
        ecs.add_client_error("list_tasks", "ThrottlingException", "Rate exceeded")
        code, body = call_api(wake.handler)
    assert (code, body["error"]) == (503, "throttled")
    assert cloud.desired_count() == 0
