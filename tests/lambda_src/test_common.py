"""common: configuration, clients, error translation, state rules, event and response shapes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from fluidity_lambda import common

from tests.lambda_src.conftest import api_event

# -- configuration --------------------------------------------------------------------------


def test_config_reads_cluster_and_service() -> None:
    cfg = common.parse_config({"CLUSTER_NAME": " fluidity ", "SERVICE_NAME": "server"})
    assert cfg == common.Config(cluster="fluidity", service="server")
    assert cfg.service_name == "server"


def test_service_arn_gives_its_bare_name() -> None:
    arn = "arn:aws:ecs:us-east-1:123456789012:service/fluidity/fluidity-server"
    cfg = common.parse_config({"CLUSTER_NAME": "fluidity", "SERVICE_NAME": arn})
    assert cfg.service == arn
    assert cfg.service_name == "fluidity-server"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SERVICE_NAME": "s"}, "CLUSTER_NAME"),
        ({"CLUSTER_NAME": "c"}, "SERVICE_NAME"),
        ({"CLUSTER_NAME": "c", "SERVICE_NAME": "   "}, "SERVICE_NAME"),
    ],
)
def test_missing_variable_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(common.ConfigError, match=f"^{named} is not set"):
        common.parse_config(env)


def test_sleep_config_defaults() -> None:
    assert common.parse_sleep_config({}) == common.SleepConfig(
        idle_threshold_minutes=15, wake_grace_minutes=10, metric_namespace="Fluidity"
    )


def test_sleep_config_values() -> None:
    env = {
        "IDLE_THRESHOLD_MINUTES": "30",
        "WAKE_GRACE_MINUTES": "0",
        "METRIC_NAMESPACE": "Fluidity/Dev",
    }
    assert common.parse_sleep_config(env) == common.SleepConfig(30, 0, "Fluidity/Dev")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("IDLE_THRESHOLD_MINUTES", "abc", "not a number of minutes"),
        ("IDLE_THRESHOLD_MINUTES", "nan", "out of range"),
        ("METRIC_PERIOD_SECONDS", "7", "not a CloudWatch period"),
        ("IDLE_THRESHOLD_MINUTES", "0", "out of range"),
        ("IDLE_THRESHOLD_MINUTES", "1441", "out of range"),
        ("WAKE_GRACE_MINUTES", "-1", "out of range"),
        ("METRIC_NAMESPACE", "AWS/ECS", "not a CloudWatch namespace"),
        ("METRIC_NAMESPACE", "bad$name", "not a CloudWatch namespace"),
    ],
)
def test_invalid_sleep_variable_is_named(name: str, value: str, says: str) -> None:
    with pytest.raises(common.ConfigError, match=f"^{name}=.*{says}"):
        common.parse_sleep_config({name: value})


def test_config_is_read_once_per_container(monkeypatch: pytest.MonkeyPatch) -> None:
    first = common.config()
    monkeypatch.setenv("CLUSTER_NAME", "changed")
    assert common.config() is first
    common.reset()
    assert common.config().cluster == "changed"


def test_invalid_config_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLUSTER_NAME")
    with pytest.raises(common.ConfigError):
        common.config()
    monkeypatch.setenv("CLUSTER_NAME", "back")
    assert common.config().cluster == "back"


# -- clients --------------------------------------------------------------------------------


def test_clients_are_made_once_and_reused() -> None:
    assert common.client("ecs") is common.client("ecs")
    assert common.client("ecs") is not common.client("ec2")
    assert common.client("ecs").meta.region_name == "us-east-1"


def test_endpoint_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:5001")
    assert common.client("ecs").meta.endpoint_url == "http://127.0.0.1:5000"
    assert common.client("cloudwatch").meta.endpoint_url == "http://127.0.0.1:5000"
    assert common.client("ec2").meta.endpoint_url == "http://127.0.0.1:5001"


def test_default_endpoint_is_aws() -> None:
    assert common.client("ecs").meta.endpoint_url == "https://ecs.us-east-1.amazonaws.com"


# -- AWS errors -----------------------------------------------------------------------------


def client_error(code: str, message: str = "no") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Operation")


@pytest.mark.parametrize(
    "code", ["ClusterNotFoundException", "ServiceNotFoundException", "ServiceNotActiveException"]
)
def test_not_found_codes_become_service_not_found(code: str) -> None:
    expected = rf"ECS X failed: {code}: .*CLUSTER_NAME"
    with pytest.raises(common.ServiceNotFoundError, match=expected), common.aws("ECS X"):
        raise client_error(code)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ThrottlingException", 503, "throttled"),
        ("RequestLimitExceeded", 503, "throttled"),
        ("AccessDeniedException", 502, "aws_error"),
        ("InternalFailure", 502, "aws_error"),
    ],
)
def test_client_errors_become_aws_errors(code: str, status: int, kind: str) -> None:
    with pytest.raises(common.AwsError) as caught, common.aws("ECS UpdateService"):
        raise client_error(code, "details")
    assert (caught.value.status, caught.value.code, caught.value.aws_code) == (status, kind, code)
    assert str(caught.value) == f"ECS UpdateService failed: {code}: details"


def test_connection_errors_become_aws_errors() -> None:
    with (
        pytest.raises(common.AwsError, match="EndpointConnectionError") as caught,
        common.aws("ECS DescribeServices"),
    ):
        raise EndpointConnectionError(endpoint_url="https://ecs.example")
    assert caught.value.status == 502


# -- the state rules ------------------------------------------------------------------------

RUNNING = {"lastStatus": "RUNNING"}
PENDING = {"lastStatus": "PENDING"}
STOPPED = {"lastStatus": "STOPPED"}


@pytest.mark.parametrize(
    ("desired", "running", "pending", "tasks", "state"),
    [
        (0, 0, 0, [], "stopped"),
        (0, 0, 0, [STOPPED], "stopped"),
        (0, 1, 0, [], "stopping"),
        (0, 0, 1, [], "stopping"),
        (0, 0, 0, [RUNNING], "stopping"),
        (0, 0, 0, [{"lastStatus": "DEPROVISIONING"}], "stopping"),
        (1, 0, 0, [], "starting"),
        (1, 0, 1, [PENDING], "starting"),
        (1, 1, 0, [], "starting"),  # counts say running, but no task to connect to yet
        (1, 1, 0, [RUNNING], "running"),
        (1, 1, 1, [RUNNING, PENDING], "running"),
        (2, 0, 0, [{"lastStatus": "PROVISIONING"}], "starting"),
    ],
)
def test_classify(
    desired: int, running: int, pending: int, tasks: list[dict[str, Any]], state: str
) -> None:
    assert common.classify(desired, running, pending, tasks) == state


def at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (None, 60),
        ({"lastStatus": "PROVISIONING"}, 60),  # no createdAt: nothing to count from
        ({"createdAt": at(1000)}, 60),
        ({"createdAt": at(980)}, 40),
        ({"createdAt": at(979.5)}, 40),  # rounded up: never promises too early
        ({"createdAt": at(900)}, 0),
        ({"createdAt": at(1010)}, 60),  # clocks disagree: never more than a full start
    ],
)
def test_start_estimate(task: dict[str, Any] | None, expected: int) -> None:
    assert common.start_estimate(task, 1000.0) == expected


def test_last_woken_takes_the_latest_signal() -> None:
    service = {
        "tags": [{"key": common.WOKEN_AT_TAG, "value": "500"}, {"key": "other", "value": "9"}],
        "deployments": [
            {"status": "PRIMARY", "createdAt": at(100), "updatedAt": at(200)},
            {"status": "ACTIVE", "updatedAt": at(9000)},  # an old deployment's: ignored
        ],
    }
    tasks = [{"createdAt": at(300), "startedAt": at(400)}]
    assert common.last_woken(service, tasks) == common.WakeSignal(500.0, "wake request")
    assert common.last_woken(service, [{"startedAt": at(600)}]) == common.WakeSignal(
        600.0, "task started"
    )
    assert common.last_woken({"deployments": service["deployments"]}, []) == (
        common.WakeSignal(200.0, "service updated")
    )


def test_last_woken_without_signals_or_with_a_bad_tag() -> None:
    assert common.last_woken({}, []) is None
    assert common.last_woken({"tags": [{"key": common.WOKEN_AT_TAG, "value": "soon"}]}, []) is None


def test_epoch() -> None:
    assert common.epoch(at(12.5)) == 12.5
    assert common.epoch(7) == 7.0
    assert common.epoch(None) is None
    assert common.epoch(True) is None
    assert common.epoch("2025-01-01") is None


# -- events and responses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "api"),
    [
        (api_event(), True),
        ({"version": "2.0", "requestContext": {"http": {"method": "POST"}}}, True),
        ({}, False),
        ({"reason": "daily_scheduled_shutdown"}, False),
        (None, False),
        ([], False),
    ],
)
def test_is_api_event(event: object, api: bool) -> None:
    assert common.is_api_event(event) is api


def test_serve_answers_an_api_event_with_a_proxy_response() -> None:
    response = common.serve("t", api_event(), lambda: {"state": "stopped"})
    assert response == {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": '{"state": "stopped"}',
    }


def test_serve_answers_a_direct_call_with_the_object() -> None:
    assert common.serve("t", {}, lambda: {"state": "stopped"}) == {"state": "stopped"}


def fail_with(exc: Exception) -> Any:
    def operation() -> dict[str, Any]:
        raise exc

    return operation


def test_serve_turns_errors_into_json_for_the_api() -> None:
    response = common.serve("t", api_event(), fail_with(common.ConfigError("X is not set")))
    assert response["statusCode"] == 500
    assert json.loads(response["body"]) == {"error": "config_error", "message": "X is not set"}
    throttled = common.AwsError("ECS DescribeServices", "ThrottlingException", "slow down")
    response = common.serve("t", api_event(), fail_with(throttled))
    assert response["statusCode"] == 503
    assert json.loads(response["body"])["error"] == "throttled"


def test_serve_hides_unexpected_errors_from_the_api(caplog: pytest.LogCaptureFixture) -> None:
    response = common.serve("t", api_event(), fail_with(KeyError("secret detail")))
    assert response["statusCode"] == 500
    body = json.loads(response["body"])
    assert body["error"] == "internal"
    assert "secret detail" not in body["message"]
    assert "t failed unexpectedly" in caplog.text


@pytest.mark.parametrize("event", [{}, None, {"reason": "schedule"}])
def test_serve_raises_for_direct_calls(event: object) -> None:
    with pytest.raises(common.ConfigError):
        common.serve("t", event, fail_with(common.ConfigError("X is not set")))
    with pytest.raises(KeyError):
        common.serve("t", event, fail_with(KeyError("k")))


def test_serve_logs_the_reason_of_a_scheduled_call(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="fluidity_lambda"):
        common.serve("kill", {"reason": "daily_scheduled_shutdown"}, lambda: {})
    assert "kill invoked: daily_scheduled_shutdown" in caplog.text
