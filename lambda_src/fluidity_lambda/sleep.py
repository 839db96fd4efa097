"""Sleep (EventBridge Scheduler, every few minutes): stop the server once nobody uses it.

Over the last IDLE_THRESHOLD_MINUTES, the server is idle when no ActiveConnections datapoint
is above 0 and the latest LastActivityEpochSeconds is at least that old. Unlike the Go
original, no datapoints at all count as idle: a server that reports nothing (crashed, no
permission to put metrics) would otherwise run, and cost, forever. What protects a server that
has not reported yet is the grace period: nothing woken less than WAKE_GRACE_MINUTES ago is
stopped. In doubt (the metrics cannot be read) nothing is changed.

The checks run cheapest first: a stopped service costs one ECS call and no CloudWatch query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from . import common

SleepAction = Literal["slept", "kept_awake", "skipped", "error"]

ACTIVE_CONNECTIONS = "ActiveConnections"
LAST_ACTIVITY = "LastActivityEpochSeconds"
#: The server emits once a minute; finer periods would only split its datapoints.
PERIOD = 60
#: GetMetricData pages to follow at most (one is plenty for two metrics over a day).
_MAX_PAGES = 10


class SleepBody(TypedDict):
    action: SleepAction
    #: Why, with the numbers it was decided on.
    reason: str
    #: Highest per-minute average of ActiveConnections in the window; None without datapoints.
    active_connections: float | None
    #: Latest LastActivityEpochSeconds in the window (Unix time); None without datapoints.
    last_activity_epoch: float | None
    #: Seconds since that last activity; None without it.
    idle_seconds: float | None


@dataclass(frozen=True)
class Activity:
    """What the server's metrics say about the window."""

    active_connections: float | None
    last_activity_epoch: float | None


def _body(
    action: SleepAction, reason: str, activity: Activity | None = None, at: float = 0.0
) -> SleepBody:
    last = activity.last_activity_epoch if activity else None
    return SleepBody(
        action=action,
        reason=reason,
        active_connections=activity.active_connections if activity else None,
        last_activity_epoch=last,
        idle_seconds=round(at - last, 1) if last is not None else None,
    )


def metric_window(
    at: float, threshold_minutes: float, period: int = PERIOD
) -> tuple[datetime, datetime]:
    """Whole periods covering at least the last `threshold_minutes`, the current one included."""
    start = math.floor((at - threshold_minutes * 60) / period) * period
    end = (math.floor(at / period) + 1) * period
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


def read_activity(cfg: common.Config, scfg: common.SleepConfig, at: float) -> Activity:
    """Query both metrics in one GetMetricData call; anything short of a full answer raises."""
    start, end = metric_window(at, scfg.idle_threshold_minutes, scfg.metric_period)
    dimensions = [{"Name": "Service", "Value": cfg.service_name}]
    queries = [
        {
            "Id": query_id,
            "MetricStat": {
                "Metric": {
                    "Namespace": scfg.metric_namespace,
                    "MetricName": metric,
                    "Dimensions": dimensions,
                },
                "Period": scfg.metric_period,
                "Stat": stat,
            },
            "ReturnData": True,
        }
        for query_id, metric, stat in (
            ("active", ACTIVE_CONNECTIONS, "Average"),
            ("last", LAST_ACTIVITY, "Maximum"),
        )
    ]
    values: dict[str, list[float]] = {"active": [], "last": []}
    request: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end}
    cloudwatch = common.client("cloudwatch")
    for _ in range(_MAX_PAGES):
        with common.aws("CloudWatch GetMetricData"):
            response = cloudwatch.get_metric_data(**request)
        for result in response.get("MetricDataResults", []):
            status = result.get("StatusCode", "Complete")
            if status in ("Forbidden", "InternalError"):
                messages = "; ".join(m.get("Value", "") for m in result.get("Messages", []))
                raise common.AwsError("CloudWatch GetMetricData", status, messages or status)
            values[result["Id"]].extend(float(v) for v in result.get("Values", []))
        token = response.get("NextToken")
        if not token:
            break
        request["NextToken"] = token
    return Activity(max(values["active"], default=None), max(values["last"], default=None))


def decide(activity: Activity, at: float, threshold_minutes: float) -> tuple[bool, str]:
    """Idle or not, and why; either kind of use keeps the server up."""
    window = f"in the last {threshold_minutes:g} min"
    threshold = threshold_minutes * 60
    active, last = activity.active_connections, activity.last_activity_epoch
    if active is None and last is None:
        return True, f"no datapoints {window}: the server reports nothing, counted as idle"
    if active is not None and active > 0:
        return False, f"{active:g} active connections (highest per-minute average) {window}"
    if last is None:
        return True, f"no active connections and no {LAST_ACTIVITY} datapoints {window}"
    idle = max(0.0, at - last)  # a datapoint newer than this check's clock is 0 s old
    if idle < threshold:
        return False, f"last activity {idle:.0f} s ago, under the {threshold:g} s idle threshold"
    return True, f"no active connections, last activity {idle:.0f} s ago (>= {threshold:g} s)"


def _within_grace(woken: common.WakeSignal | None, at: float, grace: float) -> str | None:
    if woken is None or at - woken.at >= grace:
        return None
    return (
        f"woken {at - woken.at:.0f} s ago ({woken.source}), within the {grace:.0f} s grace period"
    )


def sleep() -> SleepBody:
    """Decide, and stop the service if it is idle; the decision and its reason."""
    cfg = common.config()
    scfg = common.sleep_config()
    grace = scfg.wake_grace_minutes * 60
    at = common.now()
    service = common.describe_service(cfg)
    tasks = common.list_tasks(cfg)
    current = common.service_state(service, tasks, resolve_address=False)
    if current.status["desired_count"] == 0:
        return _body("skipped", f"the service is already {current.state} (desired count 0)")
    if reason := _within_grace(current.woken, at, grace):
        return _body("kept_awake", reason)
    try:
        activity = read_activity(cfg, scfg, at)
    except common.AwsError as exc:
        common.log.error("sleep: cannot read the metrics, changing nothing: %s", exc)
        return _body("error", f"could not read the metrics, changed nothing: {exc}")
    idle, reason = decide(activity, at, scfg.idle_threshold_minutes)
    if not idle:
        return _body("kept_awake", reason, activity, at)
    # A wake request may have come in while the metrics were read: look once more.
    service = common.describe_service(cfg)
    if int(service.get("desiredCount", 0)) == 0:
        return _body("skipped", "the service was stopped during this check", activity, at)
    if late := _within_grace(common.last_woken(service, tasks), common.now(), grace):
        return _body("kept_awake", f"{late} (woken during this check)", activity, at)
    common.update_desired_count(cfg, 0)
    return _body("slept", f"idle: {reason}", activity, at)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point."""
    return common.serve("sleep", event, sleep)
