"""CloudWatch metrics: how busy the server is, for the Sleep function that stops it when idle.

Every ``metrics_interval`` seconds, and once at start, the server puts two metrics into the
``metrics_namespace`` namespace with the dimension ``Service=<service_name>``:

``ActiveConnections`` (Count)
    Proxied client connections open now. The agent's link and its keepalive pings are not
    counted: an agent that is connected but unused leaves the server idle.
``LastActivityEpochSeconds`` (Seconds)
    When a connection last opened, closed or moved a byte, as Unix time. Before the first
    connection it is the time the server started: a fresh server counts as active at start,
    so the Sleep function's grace period runs from the start, the same way it runs from the
    last use later, and a server that was just woken is not stopped before anyone can use it.

Both are read from the `ActivityTracker` that /metrics exports as ``fluidity_server_open_streams``
and ``fluidity_server_last_activity_timestamp_seconds`` (`prom`): one set of counters.

Both are sent whether or not there was traffic: a steady series is what tells "idle" from
"not reporting". An open but quiet connection (a long WebSocket) keeps ActiveConnections above
zero while LastActivityEpochSeconds ages; the Sleep function should treat either as use.

The parts that decide something are plain functions (`build_request`, `retry_delay`) tested
without AWS; `MetricsEmitter` is the trio shell. boto3 blocks, so every call runs in a worker
thread, one at a time, under a timeout. A failure is logged and retried with backoff and never
reaches the server's nursery: losing metrics must never disturb traffic.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import trio

from fluidity.settings import ConfigError

from .activity import ActivitySnapshot, ActivityTracker
from .settings import ServerConfig

__all__ = [
    "ACTIVE_CONNECTIONS",
    "LAST_ACTIVITY",
    "MetricsEmitter",
    "MetricsSettings",
    "MetricsSetupError",
    "MetricsStatistics",
    "build_request",
    "check_credentials",
    "make_client",
    "retry_delay",
]

log = logging.getLogger("fluidity.server.metrics")

ACTIVE_CONNECTIONS = "ActiveConnections"
LAST_ACTIVITY = "LastActivityEpochSeconds"

#: Longest a single PutMetricData (or creating the client) may take before it counts as failed.
PUT_TIMEOUT = 10.0
#: Longest the startup check may spend finding credentials (the ECS/EC2 endpoints are HTTP).
CHECK_TIMEOUT = 30.0
#: First retry after a failure: soon, since a missed data point is worth a quick second try...
RETRY_INITIAL = 5.0
#: ...then doubling up to this, so a long outage or a missing permission doesn't flood the log.
RETRY_MAX = 300.0

_HOW_TO_FIX = (
    "Give the server AWS credentials allowed to call cloudwatch:PutMetricData (on ECS/Fargate "
    "a task role; elsewhere AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
    "~/.aws/credentials), or turn metrics off (metrics_enabled: false, "
    "FLUIDITY_METRICS_ENABLED=false or --no-metrics-enabled)"
)


class MetricsSetupError(ConfigError):
    """Metrics are enabled but cannot work (no credentials, no region); found at startup."""


@attrs.frozen
class MetricsSettings:
    """What the emitter needs from the server config, plus timings tests may shorten."""

    namespace: str = "Fluidity"
    service_name: str = "fluidity"
    #: Seconds between emissions (from the start of one to the start of the next).
    interval: float = 60.0
    region: str | None = None
    endpoint_url: str | None = None
    put_timeout: float = PUT_TIMEOUT
    retry_initial: float = RETRY_INITIAL
    retry_max: float = RETRY_MAX

    @classmethod
    def from_config(cls, config: ServerConfig) -> MetricsSettings:
        interval = config.metrics_interval
        return cls(
            namespace=config.metrics_namespace,
            service_name=config.service_name,
            interval=interval,
            region=config.aws_region,
            endpoint_url=config.aws_endpoint_url,
            # Never retry later than the regular tick at first, nor cap below it.
            retry_initial=min(RETRY_INITIAL, interval),
            retry_max=max(RETRY_MAX, interval),
        )


@attrs.frozen
class MetricsStatistics:
    #: PutMetricData calls that succeeded.
    sent: int
    #: Attempts that failed (client creation, the call, or its timeout).
    failed: int
    #: Failures since the last success; the current backoff step.
    consecutive_failures: int


# -- sans-I/O ---------------------------------------------------------------------------------


def build_request(
    settings: MetricsSettings, snapshot: ActivitySnapshot, now: float
) -> dict[str, Any]:
    """The keyword arguments of one ``put_metric_data`` call for `snapshot`, taken at `now`."""
    dimensions = [{"Name": "Service", "Value": settings.service_name}]
    timestamp = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    return {
        "Namespace": settings.namespace,
        "MetricData": [
            {
                "MetricName": ACTIVE_CONNECTIONS,
                "Dimensions": dimensions,
                "Timestamp": timestamp,
                "Value": float(snapshot.active),
                "Unit": "Count",
            },
            {
                "MetricName": LAST_ACTIVITY,
                "Dimensions": dimensions,
                "Timestamp": timestamp,
                "Value": float(snapshot.last_activity_epoch),
                "Unit": "Seconds",
            },
        ],
    }


def retry_delay(failures: int, initial: float, cap: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row: initial, doubling, capped."""
    if failures < 1:
        raise ValueError("retry_delay is for after a failure (failures >= 1)")
    return min(cap, initial * 2.0 ** min(failures - 1, 64))


# -- boto3 (blocking; call through trio.to_thread) ------------------------------------------


def make_client(settings: MetricsSettings) -> Any:
    """A CloudWatch client for `settings` (blocking: loads the service model).

    Its own session, because boto3's default one is not safe to build from several threads.
    botocore does not retry: the emitter does, with backoff and a log line per failure.
    """
    import boto3  # heavy; only imported when metrics are on
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client(
        "cloudwatch",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=Config(
            connect_timeout=settings.put_timeout,
            read_timeout=settings.put_timeout,
            retries={"total_max_attempts": 1},
        ),
    )


def check_credentials(region: str | None = None) -> None:
    """Raise `MetricsSetupError` unless boto3 finds credentials and a region (blocking).

    Called at startup so that a server that cannot report is a clear error instead of a
    warning every few minutes in a log nobody reads. Nothing secret goes into the message.
    """
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except BotoCoreError as exc:
        raise MetricsSetupError(
            f"metrics_enabled is true but loading AWS credentials failed: {exc}. {_HOW_TO_FIX}",
            key="metrics_enabled",
        ) from None
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise MetricsSetupError(
            f"metrics_enabled is true but no AWS credentials were found. {_HOW_TO_FIX}",
            key="metrics_enabled",
        )
    if not (region or session.region_name):
        raise MetricsSetupError(
            "metrics_enabled is true but no AWS region is set: set aws_region "
            "(FLUIDITY_AWS_REGION or --aws-region) or AWS_DEFAULT_REGION",
            key="aws_region",
        )


# -- trio shell -------------------------------------------------------------------------------


class MetricsEmitter:
    """Puts the activity metrics now and every interval until cancelled."""

    def __init__(
        self,
        settings: MetricsSettings,
        activity: ActivityTracker,
        *,
        client_factory: Callable[[MetricsSettings], Any] = make_client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.activity = activity
        self._client_factory = client_factory
        self._clock = clock
        self._client: Any = None
        # One boto3 call at a time: a call abandoned at its timeout keeps the token until its
        # thread ends (botocore's own timeouts see to that), so calls never pile up.
        self._limiter = trio.CapacityLimiter(1)
        self._sent = 0
        self._failed = 0
        self._consecutive = 0

    def statistics(self) -> MetricsStatistics:
        return MetricsStatistics(self._sent, self._failed, self._consecutive)

    async def check_credentials(self) -> None:
        """`check_credentials` off the event loop, bounded; raises `MetricsSetupError`."""
        try:
            with trio.fail_after(CHECK_TIMEOUT):
                await trio.to_thread.run_sync(
                    check_credentials, self.settings.region, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            raise MetricsSetupError(
                f"metrics_enabled is true but looking for AWS credentials took more than "
                f"{CHECK_TIMEOUT:.0f} s. {_HOW_TO_FIX}",
                key="metrics_enabled",
            ) from None

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Emit at once, then every interval, traffic or not; backs off while failing.

        `task_status.started()` comes after the first attempt, whatever its outcome. Only
        cancellation ends it; every other error is logged and retried.
        """
        first = True
        while True:
            began = trio.current_time()
            ok = await self._emit_once()
            if first:
                task_status.started()
                first = False
            if ok:
                await trio.sleep_until(began + self.settings.interval)
            else:
                await trio.sleep(
                    retry_delay(
                        self._consecutive, self.settings.retry_initial, self.settings.retry_max
                    )
                )

    async def _emit_once(self) -> bool:
        timeout = self.settings.put_timeout
        try:
            if self._client is None:  # once; again only if creating it failed
                with trio.fail_after(timeout):
                    self._client = await self._in_thread(self._client_factory, self.settings)
            request = build_request(self.settings, self.activity.snapshot(), self._clock())
            with trio.fail_after(timeout):
                await self._in_thread(functools.partial(self._client.put_metric_data, **request))
        except Exception as exc:  # anything but cancellation: log, back off, carry on
            self._failed += 1
            self._consecutive += 1
            delay = retry_delay(
                self._consecutive, self.settings.retry_initial, self.settings.retry_max
            )
            log.warning(
                "CloudWatch metrics not sent (%s); next attempt in %g s",
                _describe(exc, timeout),
                delay,
                extra={"failures": self._consecutive, "retry_in": delay},
            )
            return False
        if self._consecutive:
            log.info("CloudWatch metrics sent again after %d failed attempts", self._consecutive)
        elif not self._sent:
            log.info(
                "CloudWatch metrics: %s and %s to %s every %g s",
                ACTIVE_CONNECTIONS,
                LAST_ACTIVITY,
                self.settings.namespace,
                self.settings.interval,
            )
        self._sent += 1
        self._consecutive = 0
        return True

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(
            fn, *args, abandon_on_cancel=True, limiter=self._limiter
        )


def _describe(exc: Exception, timeout: float) -> str:
    """The error for the log: type and message (botocore's carry no secrets), kept short."""
    if isinstance(exc, trio.TooSlowError):
        return f"timed out after {timeout:g} s"
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."
