"""Sleep: every decision (skipped, grace, idle, in use, no data, metrics error) and its reason."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from botocore.stub import Stubber
from fluidity_lambda import common, kill, sleep, wake

from tests.lambda_src.conftest import NOW, SERVICE, Clock, Cloud, call_api

MINUTE = 60


@pytest.fixture
def awake(cloud: Cloud) -> Cloud:
    """A service that has been running for two hours, never woken through Wake."""
    cloud.set_counts(desired=1, running=1)
    cloud.start_task(created=NOW - 7200, started=NOW - 7140)
    return cloud


@pytest.fixture
def queries(cloud: Cloud) -> list[dict[str, Any]]:
    """The parameters of every GetMetricData call the handler makes."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **kwargs: Any) -> None:
        seen.append(params)

    common.client("cloudwatch").meta.events.register(
        "provide-client-params.cloudwatch.GetMetricData", record
    )
    return seen


def emit(
    cloud: Cloud, minutes: int, active: float, last_activity: float | None, service: str = SERVICE
) -> None:
    """The server's once-a-minute emissions over the last `minutes`."""
    for k in range(minutes):
        cloud.put_metrics(NOW - k * MINUTE, active, last_activity, service=service)


def no_metrics(reason: str) -> dict[str, Any]:
    return {
        "reason": reason,
        "active_connections": None,
        "last_activity_epoch": None,
        "idle_seconds": None,
    }


# -- nothing to decide ----------------------------------------------------------------------


def test_stopped_is_skipped_without_reading_metrics(
    cloud: Cloud, queries: list[dict[str, Any]]
) -> None:
    body = sleep.handler({}, None)
    assert body == {
        "action": "skipped",
        **no_metrics("the service is already stopped (desired count 0)"),
    }
    assert queries == []


def test_stopping_is_skipped(cloud: Cloud) -> None:
    cloud.set_counts(desired=0, running=1)
    body = sleep.handler({}, None)
    assert (body["action"], body["reason"]) == (
        "skipped",
        "the service is already stopping (desired count 0)",
    )


# -- the grace period after a wake ----------------------------------------------------------


def test_grace_after_a_wake_request(
    awake: Cloud, clock: Clock, queries: list[dict[str, Any]]
) -> None:
    awake.tag_woken(NOW - 120)
    body = sleep.handler({}, None)
    assert body == {
        "action": "kept_awake",
        **no_metrics("woken 120 s ago (wake request), within the 600 s grace period"),
    }
    assert awake.desired_count() == 1
    assert queries == []


def test_grace_after_wake_through_the_handler(cloud: Cloud, clock: Clock) -> None:
    wake.handler({}, None)
    clock.at += 9 * MINUTE
    assert sleep.handler({}, None)["action"] == "kept_awake"
    clock.at += MINUTE
    body = sleep.handler({}, None)  # 10 min: over, and no server ever reported
    assert body["action"] == "slept"
    assert cloud.desired_count() == 0


@pytest.mark.parametrize(
    ("created", "started", "source", "ago"),
    [(NOW - 300, None, "task created", 300), (NOW - 900, NOW - 30, "task started", 30)],
)
def test_grace_after_a_task_start(
    cloud: Cloud, created: float, started: float | None, source: str, ago: int
) -> None:
    cloud.set_counts(desired=1, running=0)
    cloud.start_task(status="PENDING", created=created, started=started)
    body = sleep.handler({}, None)
    assert body["action"] == "kept_awake"
    assert body["reason"] == f"woken {ago} s ago ({source}), within the 600 s grace period"


def test_grace_after_a_service_update(awake: Cloud) -> None:
    awake.set_deployment_time(NOW - 60)
    body = sleep.handler({}, None)
    assert body["reason"] == "woken 60 s ago (service updated), within the 600 s grace period"


def test_grace_ends(awake: Cloud) -> None:
    awake.tag_woken(NOW - 600)
    assert sleep.handler({}, None)["action"] == "slept"


def test_no_grace(awake: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAKE_GRACE_MINUTES", "0")
    awake.tag_woken(NOW)
    assert sleep.handler({}, None)["action"] == "slept"


# -- the metrics ----------------------------------------------------------------------------


def test_no_datapoints_count_as_idle(awake: Cloud) -> None:
    body = sleep.handler({}, None)
    assert body == {
        "action": "slept",
        **no_metrics(
            "idle: no datapoints in the last 15 min: the server reports nothing, counted as idle"
        ),
    }
    assert awake.desired_count() == 0


def test_idle(awake: Cloud) -> None:
    emit(awake, 15, active=0, last_activity=NOW - 1200)
    body = sleep.handler({}, None)
    assert body == {
        "action": "slept",
        "reason": "idle: no active connections, last activity 1200 s ago (>= 900 s)",
        "active_connections": 0.0,
        "last_activity_epoch": NOW - 1200,
        "idle_seconds": 1200.0,
    }
    assert awake.desired_count() == 0


def test_active_connections_keep_it_awake(awake: Cloud) -> None:
    emit(awake, 15, active=0, last_activity=NOW - 1200)
    awake.put_metrics(NOW - 5 * MINUTE + 1, active=3, last_activity=NOW - 1200)
    body = sleep.handler({}, None)
    assert body["action"] == "kept_awake"
    assert body["reason"] == (
        "1.5 active connections (highest per-minute average) in the last 15 min"
    )
    assert body["active_connections"] == 1.5  # that minute: 0 and 3
    assert awake.desired_count() == 1


def test_a_quiet_open_connection_keeps_it_awake(awake: Cloud) -> None:
    """A long WebSocket moving no bytes: activity ages, the connection still counts."""
    emit(awake, 15, active=1, last_activity=NOW - 3600)
    body = sleep.handler({}, None)
    assert (body["action"], body["idle_seconds"]) == ("kept_awake", 3600.0)


def test_recent_activity_keeps_it_awake(awake: Cloud) -> None:
    emit(awake, 15, active=0, last_activity=NOW - 300)
    body = sleep.handler({}, None)
    assert body == {
        "action": "kept_awake",
        "reason": "last activity 300 s ago, under the 900 s idle threshold",
        "active_connections": 0.0,
        "last_activity_epoch": NOW - 300,
        "idle_seconds": 300.0,
    }


@pytest.mark.parametrize(("idle", "action"), [(899, "kept_awake"), (900, "slept")])
def test_threshold_boundary(awake: Cloud, idle: int, action: str) -> None:
    emit(awake, 15, active=0, last_activity=NOW - idle)
    assert sleep.handler({}, None)["action"] == action


def test_latest_activity_wins(awake: Cloud) -> None:
    emit(awake, 15, active=0, last_activity=NOW - 5000)
    awake.put_metrics(NOW - 2 * MINUTE, active=0, last_activity=NOW - 200)
    assert sleep.handler({}, None)["idle_seconds"] == 200.0


def test_datapoints_before_the_window_do_not_count(awake: Cloud) -> None:
    awake.put_metrics(NOW - 16 * MINUTE, active=3, last_activity=NOW - 16 * MINUTE)
    body = sleep.handler({}, None)
    assert body["action"] == "slept"
    assert body["active_connections"] is None


def test_other_services_metrics_do_not_count(awake: Cloud) -> None:
    emit(awake, 15, active=5, last_activity=NOW, service="someone-else")
    assert sleep.handler({}, None)["action"] == "slept"


def test_no_last_activity_datapoints(awake: Cloud) -> None:
    emit(awake, 15, active=0, last_activity=None)
    body = sleep.handler({}, None)
    assert body["action"] == "slept"
    assert body["reason"] == (
        "idle: no active connections and no LastActivityEpochSeconds datapoints in the last 15 min"
    )
    assert (body["active_connections"], body["idle_seconds"]) == (0.0, None)


def test_threshold_from_the_environment(awake: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDLE_THRESHOLD_MINUTES", "5")
    emit(awake, 5, active=0, last_activity=NOW - 6 * MINUTE)
    body = sleep.handler({}, None)
    assert body["reason"] == "idle: no active connections, last activity 360 s ago (>= 300 s)"


def test_the_query(
    awake: Cloud, monkeypatch: pytest.MonkeyPatch, queries: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("METRIC_NAMESPACE", "Fluidity/Test")
    monkeypatch.setenv("IDLE_THRESHOLD_MINUTES", "10")
    sleep.handler({}, None)
    [params] = queries
    # NOW is 12:00:30: whole minutes from 11:50 to 12:01 cover the last 10 minutes.
    assert params["StartTime"] == dt.datetime(2025, 6, 2, 11, 50, tzinfo=dt.UTC)
    assert params["EndTime"] == dt.datetime(2025, 6, 2, 12, 1, tzinfo=dt.UTC)
    stats = {
        (
            q["MetricStat"]["Metric"]["MetricName"],
            q["MetricStat"]["Stat"],
            q["MetricStat"]["Period"],
        )
        for q in params["MetricDataQueries"]
    }
    assert stats == {
        ("ActiveConnections", "Average", 60),
        ("LastActivityEpochSeconds", "Maximum", 60),
    }
    for query in params["MetricDataQueries"]:
        metric = query["MetricStat"]["Metric"]
        assert metric["Namespace"] == "Fluidity/Test"
        assert metric["Dimensions"] == [{"Name": "Service", "Value": SERVICE}]


def test_metric_window_is_whole_minutes() -> None:
    start, end = sleep.metric_window(NOW, 15)
    assert (end - start).total_seconds() == 16 * MINUTE
    assert start.timestamp() <= NOW - 15 * MINUTE
    assert end.timestamp() > NOW
    on_the_minute = sleep.metric_window(NOW - 30, 15)
    assert on_the_minute[0].timestamp() == NOW - 30 - 15 * MINUTE


def test_pages_are_followed(awake: Cloud, queries: list[dict[str, Any]]) -> None:
    def page(active: float, last: float, token: str | None = None) -> dict[str, Any]:
        results = [
            {"Id": "active", "Label": "a", "Values": [active], "StatusCode": "Complete"},
            {"Id": "last", "Label": "l", "Values": [last], "StatusCode": "PartialData"},
        ]
        return {"MetricDataResults": results, **({"NextToken": token} if token else {})}

    with Stubber(common.client("cloudwatch")) as cloudwatch:
        cloudwatch.add_response("get_metric_data", page(0.0, NOW - 2000, token="more"))
        cloudwatch.add_response("get_metric_data", page(0.0, NOW - 100))
        body = sleep.handler({}, None)
    assert (body["action"], body["idle_seconds"]) == ("kept_awake", 100.0)
    assert ["NextToken" in q for q in queries] == [False, True]
    assert queries[1]["NextToken"] == "more"


# -- failures -------------------------------------------------------------------------------


def test_metrics_error_changes_nothing(awake: Cloud) -> None:
    # moto enforces no IAM, so the refusal is stubbed.
    with Stubber(common.client("cloudwatch")) as cloudwatch:
        cloudwatch.add_client_error("get_metric_data", "AccessDenied", "not authorized")
        body = sleep.handler({}, None)
    assert body == {
        "action": "error",
        **no_metrics(
            "could not read the metrics, changed nothing: "
            "CloudWatch GetMetricData failed: AccessDenied: not authorized"
        ),
    }
    assert awake.desired_count() == 1


def test_forbidden_result_changes_nothing(awake: Cloud) -> None:
    result = {
        "Id": "active",
        "Label": "a",
        "Timestamps": [],
        "Values": [],
        "StatusCode": "Forbidden",
        "Messages": [{"Code": "Forbidden", "Value": "no access to namespace"}],
    }
    with Stubber(common.client("cloudwatch")) as cloudwatch:
        cloudwatch.add_response("get_metric_data", {"MetricDataResults": [result]})
        body = sleep.handler({}, None)
    assert body["action"] == "error"
    assert body["reason"].endswith("Forbidden: no access to namespace")
    assert awake.desired_count() == 1


def test_ecs_error_raises(awake: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_NAME", "nope")
    with pytest.raises(common.ServiceNotFoundError):
        sleep.handler({}, None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IDLE_THRESHOLD_MINUTES", "soon"),
        ("WAKE_GRACE_MINUTES", "-5"),
        ("METRIC_NAMESPACE", "AWS/ECS"),
    ],
)
def test_invalid_configuration(
    awake: Cloud, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(common.ConfigError, match=f"^{name}="):
        sleep.handler({}, None)
    code, body = call_api(sleep.handler)
    assert code == 500
    assert body["error"] == "config_error"
    assert body["message"].startswith(f"{name}=")
    assert awake.desired_count() == 1


# -- races ----------------------------------------------------------------------------------


def call_during_the_query(monkeypatch: pytest.MonkeyPatch, handler: Any) -> None:
    cloudwatch = common.client("cloudwatch")
    real = cloudwatch.get_metric_data

    def meanwhile(**params: Any) -> Any:
        handler({}, None)
        return real(**params)

    monkeypatch.setattr(cloudwatch, "get_metric_data", meanwhile)


def test_a_wake_during_the_check_wins(awake: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    call_during_the_query(monkeypatch, wake.handler)
    body = sleep.handler({}, None)
    assert body["action"] == "kept_awake"
    assert body["reason"] == (
        "woken 0 s ago (wake request), within the 600 s grace period (woken during this check)"
    )
    assert awake.desired_count() == 1


def test_a_kill_during_the_check(awake: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    call_during_the_query(monkeypatch, kill.handler)
    body = sleep.handler({}, None)
    assert (body["action"], body["reason"]) == (
        "skipped",
        "the service was stopped during this check",
    )


# -- the event shapes -----------------------------------------------------------------------


def test_api_event(awake: Cloud) -> None:
    emit(awake, 15, active=2, last_activity=NOW)
    code, body = call_api(sleep.handler)
    assert code == 200
    assert body == sleep.handler({}, None)
    assert body["action"] == "kept_awake"


def test_scheduler_event(awake: Cloud) -> None:
    assert sleep.handler({"reason": "every 5 minutes"}, None)["action"] == "slept"
