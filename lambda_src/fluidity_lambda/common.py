"""What the handlers share: configuration, AWS clients, the service's state, the responses.

Configuration and clients are made on first use and kept for the container's life: a warm
invocation pays for neither. `now` is the one clock every handler reads, so tests can move it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypedDict

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("fluidity_lambda")
log.setLevel(logging.INFO)

State = Literal["stopped", "starting", "running", "stopping"]

#: Seconds a Fargate task typically takes from creation to RUNNING (image pull included);
#: `estimated_seconds` counts down from it.
TYPICAL_START_SECONDS = 60
#: Service tag in which Wake records, in Unix seconds, the last wake request. Sleep's grace
#: period counts from it (and from the task and deployment times; see `last_woken`).
WOKEN_AT_TAG = "fluidity:woken-at"

#: Task states after which a task holds no resources any more.
_GONE = frozenset({"STOPPED", "DELETED"})
_THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
)
_NOT_FOUND = frozenset(
    {"ClusterNotFoundException", "ServiceNotFoundException", "ServiceNotActiveException"}
)
# Headroom under API Gateway's 29 s integration timeout, retries included.
_BOTO_CONFIG = BotoConfig(
    connect_timeout=3, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"}
)
_ENDPOINT_VARIABLES = {
    "ecs": "AWS_ENDPOINT_URL_ECS",
    "ec2": "AWS_ENDPOINT_URL_EC2",
    "cloudwatch": "AWS_ENDPOINT_URL_CLOUDWATCH",
}
# What CloudWatch accepts as a namespace (and "AWS/" is reserved for AWS).
_NAMESPACE = re.compile(r"[A-Za-z0-9._/#:\- ]{1,255}")


def now() -> float:
    """Unix time; the handlers' only clock, replaced by tests."""
    return time.time()


# -- errors ---------------------------------------------------------------------------------


class ControlPlaneError(Exception):
    """Base of the handlers' errors; `status` and `code` are what an API caller sees."""

    status = 500
    code = "internal"


class ConfigError(ControlPlaneError):
    """An environment variable is missing or invalid: a deployment mistake."""

    code = "config_error"


class ServiceNotFoundError(ControlPlaneError):
    """The configured cluster or service does not exist (or was deleted)."""

    code = "service_not_found"


class AwsError(ControlPlaneError):
    """An AWS call failed; `aws_code` is AWS's error code (or the botocore exception's name)."""

    code = "aws_error"
    status = 502

    def __init__(self, operation: str, aws_code: str, message: str) -> None:
        super().__init__(f"{operation} failed: {aws_code}: {message}")
        self.operation = operation
        self.aws_code = aws_code
        if aws_code in _THROTTLED:
            self.code = "throttled"
            self.status = 503


@contextmanager
def aws(operation: str) -> Iterator[None]:
    """Translate botocore's exceptions raised inside into `AwsError` / `ServiceNotFoundError`."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or exc)
        if code in _NOT_FOUND:
            raise ServiceNotFoundError(
                f"{operation} failed: {code}: {message} (check CLUSTER_NAME and SERVICE_NAME)"
            ) from exc
        raise AwsError(operation, code, message) from exc
    except BotoCoreError as exc:
        raise AwsError(operation, type(exc).__name__, str(exc)) from exc


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Which ECS service the handlers control."""

    cluster: str
    #: Name or ARN, as given in SERVICE_NAME.
    service: str

    @property
    def service_name(self) -> str:
        """The bare name: ECS tasks' group and the metrics' Service dimension use it."""
        return self.service.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SleepConfig:
    """The Sleep handler's thresholds and where the server's metrics are."""

    idle_threshold_minutes: float
    wake_grace_minutes: float
    metric_namespace: str
    #: Seconds per datapoint Sleep asks for: 60 for the server's once-a-minute metrics; the
    #: local cloud, which runs minutes as seconds, asks for finer ones.
    metric_period: int = 60


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set: it must name {what}")
    return value


def _minutes(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    """Minutes, decimals allowed (the local cloud runs "15 minutes" as seconds)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of minutes") from None
    if not (minimum <= value <= 1440 and math.isfinite(value)):
        raise ConfigError(f"{name}={raw} is out of range: {minimum:g} to 1440 minutes")
    return value


def parse_config(env: Mapping[str, str]) -> Config:
    """Read CLUSTER_NAME and SERVICE_NAME; a `ConfigError` names the variable at fault."""
    return Config(
        cluster=_required(env, "CLUSTER_NAME", "the ECS cluster (name or ARN)"),
        service=_required(env, "SERVICE_NAME", "the server's ECS service (name or ARN)"),
    )


def parse_sleep_config(env: Mapping[str, str]) -> SleepConfig:
    """Read the Sleep handler's variables, with their defaults."""
    namespace = env.get("METRIC_NAMESPACE", "").strip() or "Fluidity"
    if not _NAMESPACE.fullmatch(namespace) or namespace.startswith("AWS/"):
        raise ConfigError(
            f"METRIC_NAMESPACE={namespace!r} is not a CloudWatch namespace (1-255 letters, "
            "digits or . - _ / # : and spaces; not starting with AWS/)"
        )
    return SleepConfig(
        idle_threshold_minutes=_minutes(env, "IDLE_THRESHOLD_MINUTES", 15, minimum=0.05),
        wake_grace_minutes=_minutes(env, "WAKE_GRACE_MINUTES", 10, minimum=0),
        metric_namespace=namespace,
        metric_period=_period(env),
    )


_PERIODS = (1, 5, 10, 30, 60)


def _period(env: Mapping[str, str]) -> int:
    raw = env.get("METRIC_PERIOD_SECONDS", "").strip() or "60"
    if not raw.isdigit() or not (int(raw) in _PERIODS or int(raw) % 60 == 0):
        raise ConfigError(
            f"METRIC_PERIOD_SECONDS={raw!r} is not a CloudWatch period: 1, 5, 10, 30 or a "
            "multiple of 60"
        )
    return int(raw)


_cache: dict[str, Any] = {}


def config() -> Config:
    """This container's `Config`, read and checked on the first invocation."""
    if "config" not in _cache:
        _cache["config"] = parse_config(os.environ)
    result: Config = _cache["config"]
    return result


def sleep_config() -> SleepConfig:
    """This container's `SleepConfig`, read and checked on the first invocation."""
    if "sleep_config" not in _cache:
        _cache["sleep_config"] = parse_sleep_config(os.environ)
    result: SleepConfig = _cache["sleep_config"]
    return result


def client(service: str) -> Any:
    """The boto3 client for `service` ("ecs", "ec2", "cloudwatch"), made once per container.

    AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, points it elsewhere (an emulator); the
    Lambda runtime's botocore may predate reading those itself.
    """
    key = f"client:{service}"
    if key not in _cache:
        endpoint = os.environ.get(_ENDPOINT_VARIABLES[service]) or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        _cache[key] = boto3.client(service, endpoint_url=endpoint or None, config=_BOTO_CONFIG)
    return _cache[key]


def reset() -> None:
    """Forget configuration and clients, as a cold start would (for tests)."""
    _cache.clear()


# -- the service ----------------------------------------------------------------------------


class StatusBody(TypedDict):
    """The service's state as Status returns it; Wake and Kill add an `action`."""

    state: State
    desired_count: int
    running_count: int
    pending_count: int
    #: Public IP of the RUNNING task, else its private IP; only in state "running".
    address: str | None
    #: lastStatus of the newest task (PROVISIONING, PENDING, RUNNING, ...); None without tasks.
    task_status: str | None
    #: Seconds until the server should be up; only in state "starting".
    estimated_seconds: int | None


@dataclass(frozen=True)
class WakeSignal:
    """The latest sign that the service was (re)started, and where it came from."""

    at: float
    source: str


@dataclass(frozen=True)
class ServiceState:
    """The service as the handlers see it: the contract's fields, plus what Sleep needs."""

    arn: str
    status: StatusBody
    woken: WakeSignal | None

    @property
    def state(self) -> State:
        return self.status["state"]


def describe_service(cfg: Config) -> dict[str, Any]:
    """DescribeServices (with tags) for the configured service; missing -> ServiceNotFoundError."""
    with aws("ECS DescribeServices"):
        response = client("ecs").describe_services(
            cluster=cfg.cluster, services=[cfg.service], include=["TAGS"]
        )
    services = [s for s in response.get("services", []) if s.get("status") == "ACTIVE"]
    if not services:
        reasons = [f.get("reason", "?") for f in response.get("failures", [])] or ["INACTIVE"]
        raise ServiceNotFoundError(
            f"ECS service {cfg.service!r} in cluster {cfg.cluster!r}: {', '.join(reasons)} "
            "(check CLUSTER_NAME and SERVICE_NAME)"
        )
    service: dict[str, Any] = services[0]
    return service


def list_tasks(cfg: Config) -> list[dict[str, Any]]:
    """The service's tasks that ECS wants running (desiredStatus RUNNING), any lastStatus."""
    ecs = client("ecs")
    with aws("ECS ListTasks"):
        arns = ecs.list_tasks(
            cluster=cfg.cluster, serviceName=cfg.service_name, desiredStatus="RUNNING"
        ).get("taskArns", [])
    if not arns:
        return []
    with aws("ECS DescribeTasks"):
        tasks = ecs.describe_tasks(cluster=cfg.cluster, tasks=arns[:100]).get("tasks", [])
    group = f"service:{cfg.service_name}"
    # ECS already filters by service; the group check keeps stray tasks out where it doesn't.
    return [t for t in tasks if t.get("group", group) == group]


def update_desired_count(cfg: Config, count: int) -> dict[str, Any]:
    """UpdateService to `count` tasks; the updated service description."""
    with aws("ECS UpdateService"):
        response = client("ecs").update_service(
            cluster=cfg.cluster, service=cfg.service, desiredCount=count
        )
    service: dict[str, Any] = response["service"]
    return service


def record_wake(service_arn: str, at: float) -> None:
    """Tag the service with the wake time; a failure only costs Sleep its best signal."""
    try:
        with aws("ECS TagResource"):
            client("ecs").tag_resource(
                resourceArn=service_arn, tags=[{"key": WOKEN_AT_TAG, "value": str(int(at))}]
            )
    except ControlPlaneError as exc:
        log.warning("could not record the wake time (%s); Sleep falls back to task times", exc)


def classify(desired: int, running: int, pending: int, tasks: Sequence[Mapping[str, Any]]) -> State:
    """The state from the service's counts and its tasks (see docs/control-plane.md)."""
    if desired <= 0:
        busy = running > 0 or pending > 0 or any(t.get("lastStatus") not in _GONE for t in tasks)
        return "stopping" if busy else "stopped"
    if any(t.get("lastStatus") == "RUNNING" for t in tasks):
        return "running"
    return "starting"


def epoch(value: object) -> float | None:
    """Unix seconds from what boto3 returns for a timestamp (a datetime), else None."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _newest(tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return max(tasks, key=lambda t: epoch(t.get("createdAt")) or 0.0, default=None)


def start_estimate(newest: Mapping[str, Any] | None, at: float) -> int:
    """Seconds left of a typical start, counted from the newest task's creation, at least 0."""
    created = epoch(newest.get("createdAt")) if newest else None
    age = max(0.0, at - created) if created is not None else 0.0
    return max(0, math.ceil(TYPICAL_START_SECONDS - age))


def last_woken(service: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> WakeSignal | None:
    """The latest of: the wake tag, a task's creation or start, the deployment's last update.

    Each is a time the service was (re)started or asked to; the latest one wins, so a server
    is never stopped within the grace period of any of them.
    """
    signals: list[WakeSignal] = []
    for tag in service.get("tags") or []:
        if tag.get("key") == WOKEN_AT_TAG:
            try:
                signals.append(WakeSignal(float(tag.get("value", "")), "wake request"))
            except ValueError:
                log.warning("ignoring the unreadable %s tag %r", WOKEN_AT_TAG, tag.get("value"))
    for task in tasks:
        for key, source in (("createdAt", "task created"), ("startedAt", "task started")):
            at = epoch(task.get(key))
            if at is not None:
                signals.append(WakeSignal(at, source))
    for deployment in service.get("deployments") or []:
        if deployment.get("status") == "PRIMARY":
            for key in ("createdAt", "updatedAt"):
                at = epoch(deployment.get(key))
                if at is not None:
                    signals.append(WakeSignal(at, "service updated"))
    return max(signals, key=lambda s: s.at, default=None)


def task_address(task: Mapping[str, Any]) -> str | None:
    """Public IP of the task's ENI, else its private IP (ECS task -> ENI -> EC2)."""
    eni_id: str | None = None
    private_ip: str | None = None
    for attachment in task.get("attachments") or []:
        if attachment.get("type") == "ElasticNetworkInterface":
            details = {d.get("name"): d.get("value") for d in attachment.get("details") or []}
            eni_id = details.get("networkInterfaceId")
            private_ip = details.get("privateIPv4Address")
            break
    if private_ip is None:
        # Tasks outside awsvpc mode (and moto's) report their address per container.
        for container in task.get("containers") or []:
            for interface in container.get("networkInterfaces") or []:
                private_ip = private_ip or interface.get("privateIpv4Address")
    if eni_id is None:
        return private_ip
    try:
        with aws("EC2 DescribeNetworkInterfaces"):
            response = client("ec2").describe_network_interfaces(NetworkInterfaceIds=[eni_id])
    except AwsError as exc:
        if exc.aws_code != "InvalidNetworkInterfaceID.NotFound":
            raise
        log.warning("task ENI %s is gone (task stopping?); using its private IP", eni_id)
        return private_ip
    for interface in response.get("NetworkInterfaces", []):
        public = (interface.get("Association") or {}).get("PublicIp")
        found: str | None = public or interface.get("PrivateIpAddress") or private_ip
        return found
    return private_ip


def service_state(
    service: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    *,
    resolve_address: bool = True,
) -> ServiceState:
    """Put the contract's status together from a service description and its tasks."""
    desired = int(service.get("desiredCount", 0))
    running = int(service.get("runningCount", 0))
    pending = int(service.get("pendingCount", 0))
    state = classify(desired, running, pending, tasks)
    newest = _newest(tasks)
    address = None
    if state == "running" and resolve_address:
        running_tasks = [t for t in tasks if t.get("lastStatus") == "RUNNING"]
        address = task_address(_newest(running_tasks) or running_tasks[0])
    status = StatusBody(
        state=state,
        desired_count=desired,
        running_count=running,
        pending_count=pending,
        address=address,
        task_status=str(newest["lastStatus"]) if newest and newest.get("lastStatus") else None,
        estimated_seconds=start_estimate(newest, now()) if state == "starting" else None,
    )
    return ServiceState(str(service.get("serviceArn", "")), status, last_woken(service, tasks))


def current_state(cfg: Config, *, resolve_address: bool = True) -> ServiceState:
    """Describe the service and its tasks now."""
    return service_state(describe_service(cfg), list_tasks(cfg), resolve_address=resolve_address)


# -- events and responses -------------------------------------------------------------------


def is_api_event(event: object) -> bool:
    """True for an API Gateway proxy event; anything else is a direct or scheduled call."""
    return isinstance(event, Mapping) and ("httpMethod" in event or "requestContext" in event)


def api_response(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """The proxy-integration answer: API Gateway turns it into the HTTP response."""
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


def serve(name: str, event: object, operation: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    """Run a handler's `operation` and shape its result, or its error, for the caller.

    An API caller always gets JSON (errors as 5xx with {"error", "message"}); a direct or
    scheduled invocation gets the object, or the exception, so Lambda counts the failure.
    """
    api = is_api_event(event)
    if not api and isinstance(event, Mapping) and event.get("reason"):
        log.info("%s invoked: %s", name, event["reason"])
    try:
        body = operation()
    except ControlPlaneError as exc:
        log.error("%s failed: %s", name, exc)
        if not api:
            raise
        return api_response(exc.status, {"error": exc.code, "message": str(exc)})
    except Exception:
        if not api:
            raise
        log.exception("%s failed unexpectedly", name)
        message = "unexpected error; the function's log has the details"
        return api_response(500, {"error": "internal", "message": message})
    log.info("%s: %s", name, json.dumps(body))
    return api_response(200, body) if api else dict(body)
