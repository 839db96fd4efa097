"""Kill: desired count 0 at once, from any state, for the API and the daily schedule."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from fluidity_lambda import common, kill

from tests.lambda_src.conftest import NOW, Cloud, call_api


def test_kills_a_running_service(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=1)
    cloud.start_task(created=NOW - 60)
    body = kill.handler({}, None)
    assert cloud.desired_count() == 0
    assert body == {
        "action": "killed",
        "state": "stopping",  # the task is still there
        "desired_count": 0,
        "running_count": 0,  # moto zeroes the count at once; ECS would lag a little
        "pending_count": 0,
        "address": None,
        "task_status": "RUNNING",
        "estimated_seconds": None,
    }


def test_kills_a_starting_service(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=0)
    body = kill.handler({}, None)
    assert cloud.desired_count() == 0
    assert (body["action"], body["state"]) == ("killed", "stopped")


def test_already_stopped(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    updates: list[Any] = []
    monkeypatch.setattr(common, "update_desired_count", lambda cfg, n: updates.append(n))
    assert kill.handler({}, None) == {
        "action": "already_stopped",
        "state": "stopped",
        "desired_count": 0,
        "running_count": 0,
        "pending_count": 0,
        "address": None,
        "task_status": None,
        "estimated_seconds": None,
    }
    assert updates == []


def test_already_stopping(cloud: Cloud) -> None:
    cloud.set_counts(desired=0, running=1)
    body = kill.handler({}, None)
    assert (body["action"], body["state"]) == ("already_stopped", "stopping")


def test_daily_schedule(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    cloud.set_counts(desired=1, running=1)
    with caplog.at_level("INFO", logger="fluidity_lambda"):
        body = kill.handler({"reason": "daily_scheduled_shutdown"}, None)
    assert body["action"] == "killed"
    assert cloud.desired_count() == 0
    assert "kill invoked: daily_scheduled_shutdown" in caplog.text


def test_api_event(cloud: Cloud) -> None:
    cloud.set_counts(desired=1, running=1)
    code, body = call_api(kill.handler, "POST", "/kill")
    assert (code, body["action"], body["desired_count"]) == (200, "killed", 0)
    code, body = call_api(kill.handler, "POST", "/kill")
    assert (code, body["action"]) == (200, "already_stopped")


def test_missing_service(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_NAME", "gone")
    with pytest.raises(common.ServiceNotFoundError, match="CLUSTER_NAME"):
        kill.handler({"reason": "daily_scheduled_shutdown"}, None)
    code, body = call_api(kill.handler, "POST", "/kill")
    assert (code, body["error"]) == (500, "service_not_found")


def test_throttled_update(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.set_counts(desired=1, running=1)

    def throttle(**kwargs: Any) -> Any:
        error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
        raise ClientError(error, "UpdateService")

    monkeypatch.setattr(common.client("ecs"), "update_service", throttle)
    with pytest.raises(common.AwsError, match="ThrottlingException"):
        kill.handler({"reason": "daily_scheduled_shutdown"}, None)
    code, body = call_api(kill.handler, "POST", "/kill")
    assert (code, body["error"]) == (503, "throttled")
    assert cloud.desired_count() == 1
