"""CloudWatch metrics: the request built from a snapshot, the backoff, the credentials check,
and the emitter against a real `moto_server` process on loopback (and against dead ones)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import boto3
import pytest
import trio

from fluidity.logs import extra_fields
from fluidity.server.activity import ActivitySnapshot, ActivityTracker
from fluidity.server.metrics import (
    ACTIVE_CONNECTIONS,
    LAST_ACTIVITY,
    MetricsEmitter,
    MetricsSettings,
    MetricsSetupError,
    MetricsStatistics,
    build_request,
    check_credentials,
    make_client,
    retry_delay,
)
from fluidity.server.settings import ServerConfig
from tests.support.motoserver import moto_server
from tests.support.pki import make_pki
from tests.support.processes import server_args

REGION = "us-east-1"
SECRET = "fake-secret-7f3a9c"  # must never show up in a log line or an error message
METRICS_LOGGER = "fluidity.server.metrics"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_dns_queries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Refuse and record lookups of names, so boto3 can never find real AWS.

    Replaces the package's guard, which also refuses IP literals looked up without
    AI_NUMERICHOST, as urllib3 (under boto3) does for http://127.0.0.1:port; no DNS query
    is sent for those.
    """
    lookups: list[tuple[Any, ...]] = []
    real = socket.getaddrinfo

    def guarded(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        if not flags & socket.AI_NUMERICHOST and not _is_ip_literal(host):
            lookups.append((host, port))
            raise socket.gaierror(socket.EAI_NONAME, "tests send no DNS queries")
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield lookups
    assert not lookups, f"something asked the system resolver about {lookups}"


def _is_ip_literal(host: Any) -> bool:
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS credentials, profile or region from the machine; no metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Whatever forgets its endpoint lands on a closed loopback port, not on AWS.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region in the environment, as moto's guide says."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `moto_server` process on a free loopback port; yields its URL."""
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with moto_server(log_path, os.environ) as url:
        yield url


def _settings(endpoint: str, **changes: Any) -> MetricsSettings:
    """Settings with names of their own, so tests sharing moto_server don't see each other."""
    tag = uuid.uuid4().hex[:12]
    base = MetricsSettings(
        namespace=f"FluidityTest{tag}",
        service_name=f"svc-{tag}",
        region=REGION,
        endpoint_url=endpoint,
    )
    return attrs.evolve(base, **changes)


@attrs.frozen
class Stats:
    samples: int
    minimum: float
    maximum: float


def _read_back(endpoint: str, settings: MetricsSettings) -> dict[str, Stats]:
    """What moto holds for the emitter's two metrics (blocking)."""
    client = boto3.session.Session().client("cloudwatch", region_name=REGION, endpoint_url=endpoint)
    listed = client.list_metrics(Namespace=settings.namespace)["Metrics"]
    dimension = [{"Name": "Service", "Value": settings.service_name}]
    assert sorted((m["MetricName"], m["Dimensions"]) for m in listed) == [
        (ACTIVE_CONNECTIONS, dimension),
        (LAST_ACTIVITY, dimension),
    ]
    now = dt.datetime.now(dt.UTC)
    out = {}
    for name in (ACTIVE_CONNECTIONS, LAST_ACTIVITY):
        points = client.get_metric_statistics(
            Namespace=settings.namespace,
            MetricName=name,
            Dimensions=dimension,
            StartTime=now - dt.timedelta(minutes=10),
            EndTime=now + dt.timedelta(minutes=10),
            Period=60,
            Statistics=["SampleCount", "Minimum", "Maximum"],
        )["Datapoints"]
        out[name] = Stats(
            samples=int(sum(p["SampleCount"] for p in points)),
            minimum=min(p["Minimum"] for p in points),
            maximum=max(p["Maximum"] for p in points),
        )
    return out


class Calls:
    """Wraps a client: notes when each put starts and sets `reached` at the `target`-th.

    When put number N+1 starts, attempt N has finished and been counted and logged.
    `built` has each request's timestamp, which the emitter reads in its own task when the
    attempt begins: unlike `started` (in the worker thread), no thread start-up in it.
    """

    def __init__(self, client: Any, target: int) -> None:
        self.client = client
        self.target = target
        self.started: list[float] = []
        self.ended: list[float] = []
        self.built: list[float] = []
        self.reached = trio.Event()

    def put_metric_data(self, **request: Any) -> Any:
        self.started.append(time.monotonic())
        self.built.append(request["MetricData"][0]["Timestamp"].timestamp())
        if len(self.started) == self.target:
            trio.from_thread.run_sync(self.reached.set)
        try:
            return self.client.put_metric_data(**request)
        finally:
            self.ended.append(time.monotonic())


class Factory:
    """A client factory that counts the clients it makes and wraps them in `Calls`."""

    def __init__(self, target: int, make: Callable[[MetricsSettings], Any] = make_client) -> None:
        self.made = 0
        self.target = target
        self.make = make
        self.calls = Calls(None, target)

    def __call__(self, settings: MetricsSettings) -> Calls:
        self.made += 1
        self.calls.client = self.make(settings)
        return self.calls


class Warnings(logging.Handler):
    """Counts the emitter's warnings and sets `reached` at the `target`-th."""

    def __init__(self, target: int) -> None:
        super().__init__(logging.WARNING)
        self.target = target
        self.seen = 0
        self.reached = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        if self.seen >= self.target:
            self.reached.set()  # the emitter logs from its trio task, not from a thread


# -- the request and the backoff (no I/O) ------------------------------------------------------


def test_request_holds_both_metrics_with_the_service_dimension() -> None:
    settings = MetricsSettings(namespace="Fluidity", service_name="fluidity-eu")
    snapshot = ActivitySnapshot(active=3, total=17, last_activity_epoch=1_700_000_123.5)
    when = dt.datetime(2023, 11, 14, 22, 15, 30, tzinfo=dt.UTC)
    dimensions = [{"Name": "Service", "Value": "fluidity-eu"}]
    assert build_request(settings, snapshot, when.timestamp()) == {
        "Namespace": "Fluidity",
        "MetricData": [
            {
                "MetricName": "ActiveConnections",
                "Dimensions": dimensions,
                "Timestamp": when,
                "Value": 3.0,
                "Unit": "Count",
            },
            {
                "MetricName": "LastActivityEpochSeconds",
                "Dimensions": dimensions,
                "Timestamp": when,
                "Value": 1_700_000_123.5,
                "Unit": "Seconds",
            },
        ],
    }


def test_request_is_accepted_by_botocore_validation(credentials: None) -> None:
    client = make_client(MetricsSettings(region=REGION, endpoint_url="http://127.0.0.1:9"))
    request = build_request(MetricsSettings(), ActivitySnapshot(0, 0, 1.0), 2.0)
    # Serializing validates every field against the CloudWatch model, without sending.
    client.meta.events.register("before-send.cloudwatch.PutMetricData", _refuse_to_send)
    with pytest.raises(_NotSent):
        client.put_metric_data(**request)


class _NotSent(Exception):
    pass


def _refuse_to_send(**kwargs: Any) -> None:
    raise _NotSent


def test_retry_delay_doubles_from_initial_up_to_the_cap() -> None:
    assert [retry_delay(n, 5.0, 60.0) for n in range(1, 8)] == [5, 10, 20, 40, 60, 60, 60]
    assert retry_delay(10_000, 5.0, 60.0) == 60.0
    with pytest.raises(ValueError, match="after a failure"):
        retry_delay(0, 5.0, 60.0)


def test_settings_from_config_never_back_off_past_the_interval_at_first() -> None:
    config = ServerConfig(
        metrics_enabled=True,
        metrics_interval=2.0,
        metrics_namespace="NS",
        service_name="svc",
        aws_region="eu-west-1",
        aws_endpoint_url="http://127.0.0.1:4566",
    )
    settings = MetricsSettings.from_config(config)
    assert settings == MetricsSettings(
        namespace="NS",
        service_name="svc",
        interval=2.0,
        region="eu-west-1",
        endpoint_url="http://127.0.0.1:4566",
        retry_initial=2.0,
        retry_max=300.0,
    )
    defaults = MetricsSettings.from_config(ServerConfig())
    assert (defaults.interval, defaults.retry_initial, defaults.retry_max) == (60.0, 5.0, 300.0)


# -- the credentials check ----------------------------------------------------------------------


def test_no_credentials_is_a_clear_error_naming_the_setting() -> None:
    with pytest.raises(MetricsSetupError) as caught:
        check_credentials(REGION)
    message = str(caught.value)
    assert caught.value.key == "metrics_enabled"
    assert "metrics_enabled is true but no AWS credentials were found" in message
    assert "task role" in message
    assert "AWS_ACCESS_KEY_ID" in message
    assert "--no-metrics-enabled" in message


def test_partial_credentials_are_an_error_without_the_key_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPARTIALONLY")
    with pytest.raises(MetricsSetupError, match="metrics_enabled") as caught:
        check_credentials(REGION)
    assert "AKIAPARTIALONLY" not in str(caught.value)


def test_unknown_profile_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(MetricsSetupError, match=r"metrics_enabled .*no-such-profile"):
        check_credentials(REGION)


def test_credentials_without_a_region_name_aws_region(
    credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(MetricsSetupError, match="aws_region") as caught:
        check_credentials(None)
    assert caught.value.key == "aws_region"
    check_credentials("eu-west-1")


def test_credentials_and_region_from_the_environment_pass(credentials: None) -> None:
    check_credentials(None)
    check_credentials(REGION)


async def test_emitter_checks_credentials_off_the_event_loop() -> None:
    emitter = MetricsEmitter(MetricsSettings(region=REGION), ActivityTracker())
    with trio.fail_after(10), pytest.raises(MetricsSetupError, match="metrics_enabled"):
        await emitter.check_credentials()


def test_server_without_credentials_exits_2_naming_metrics_enabled(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUIDITY_")}
    result = subprocess.run(
        [sys.executable, "-m", "fluidity.server", *server_args(pki), "--metrics-enabled"],
        env={**env, "FLUIDITY_AWS_REGION": REGION, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "metrics_enabled is true but no AWS credentials were found" in output
    assert "tunnel listening" not in output


# -- the emitter against moto_server ----------------------------------------------------------


async def test_emits_once_at_start_with_start_time_as_last_activity(
    moto_endpoint: str, credentials: None
) -> None:
    settings = _settings(moto_endpoint, interval=60.0)
    tracker = ActivityTracker()  # a fresh server: nothing proxied yet
    started_at = tracker.last_activity_epoch
    emitter = MetricsEmitter(settings, tracker)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(emitter.run)  # returns after the first attempt
            assert emitter.statistics() == MetricsStatistics(1, 0, 0)
            stats = await trio.to_thread.run_sync(_read_back, moto_endpoint, settings)
            nursery.cancel_scope.cancel()
    assert stats[ACTIVE_CONNECTIONS] == Stats(1, 0.0, 0.0)
    assert stats[LAST_ACTIVITY] == Stats(1, started_at, started_at)


async def test_emits_every_interval_without_traffic_with_one_client(
    moto_endpoint: str, credentials: None
) -> None:
    settings = _settings(moto_endpoint, interval=0.2)
    tracker = ActivityTracker()
    factory = Factory(target=5)
    with tracker.track(), tracker.track():  # two client connections open, then silence
        quiet_since = tracker.last_activity_epoch
        emitter = MetricsEmitter(settings, tracker, client_factory=factory)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(emitter.run)
                await factory.calls.reached.wait()  # the 5th put starts: 4 went through
                nursery.cancel_scope.cancel()
        stats = await trio.to_thread.run_sync(_read_back, moto_endpoint, settings)
    assert factory.made == 1, "one client, reused"
    assert emitter.statistics().failed == 0
    built = factory.calls.built
    gaps = [b - a for a, b in itertools.pairwise(built)]
    # From the start of one attempt to the next; the first one also made the client. Never
    # early; late only by as much as a put to moto_server takes on a busy machine.
    assert all(0.19 <= gap < 3.0 for gap in gaps[1:]), gaps
    # Four or five samples (the fifth put may land after the cancel), all the same values.
    assert stats[ACTIVE_CONNECTIONS].samples >= 4
    assert stats[ACTIVE_CONNECTIONS] == Stats(stats[ACTIVE_CONNECTIONS].samples, 2.0, 2.0)
    assert stats[LAST_ACTIVITY] == Stats(
        stats[ACTIVE_CONNECTIONS].samples, quiet_since, quiet_since
    )


async def test_unreachable_endpoint_warns_backs_off_and_keeps_going(
    credentials: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=METRICS_LOGGER)
    with socket.socket() as closed:  # bound but not listening: refused, and the port stays ours
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        settings = _settings(
            endpoint, interval=0.2, put_timeout=10.0, retry_initial=0.02, retry_max=0.16
        )
        # Made beforehand: loading the service model on a busy machine can take longer
        # than a put's timeout, and then the first warning would be a timeout.
        client = await trio.to_thread.run_sync(make_client, settings)
        factory = Factory(target=7, make=lambda _: client)
        emitter = MetricsEmitter(settings, ActivityTracker(), client_factory=factory)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(emitter.run)
                await factory.calls.reached.wait()  # still trying after six failures
                nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.name == METRICS_LOGGER]
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert [extra_fields(r)["retry_in"] for r in warnings[:6]] == [
        0.02,
        0.04,
        0.08,
        0.16,
        0.16,
        0.16,
    ]
    assert [extra_fields(r)["failures"] for r in warnings[:6]] == [1, 2, 3, 4, 5, 6]
    for record in warnings:
        assert "CloudWatch metrics not sent (EndpointConnectionError: " in record.getMessage()
        assert endpoint in record.getMessage()
        assert SECRET not in record.getMessage()
    # Each attempt waits the announced delay after the previous one failed (how long a
    # failing put takes on a busy machine is no part of it).
    calls = factory.calls
    pauses = [start - end for end, start in zip(calls.ended, calls.started[1:], strict=False)]
    delays = [extra_fields(r)["retry_in"] for r in warnings]
    assert len(pauses) >= 6
    assert all(pause >= delay for pause, delay in zip(pauses, delays, strict=False)), pauses
    assert factory.made == 1
    stats = emitter.statistics()
    assert stats.sent == 0
    assert stats.failed >= 6


async def test_failures_then_success_resets_the_backoff(
    moto_endpoint: str, credentials: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=METRICS_LOGGER)
    settings = _settings(moto_endpoint, interval=0.2, retry_initial=0.02, retry_max=0.05)
    attempts = 0

    def flaky(settings: MetricsSettings) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise RuntimeError("simulated failure to create the client")
        return make_client(settings)

    factory = Factory(target=2, make=flaky)
    emitter = MetricsEmitter(settings, ActivityTracker(), client_factory=factory)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(emitter.run)  # the first attempt failed, and it carried on
            await factory.calls.reached.wait()
            nursery.cancel_scope.cancel()
    assert attempts == 3
    stats = emitter.statistics()  # a second put may or may not have landed before the cancel
    assert (stats.sent >= 1, stats.failed, stats.consecutive_failures) == (True, 2, 0)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == METRICS_LOGGER]
    assert messages[:3] == [
        (
            "WARNING",
            "CloudWatch metrics not sent (RuntimeError: simulated failure to create the "
            "client); next attempt in 0.02 s",
        ),
        (
            "WARNING",
            "CloudWatch metrics not sent (RuntimeError: simulated failure to create the "
            "client); next attempt in 0.04 s",
        ),
        ("INFO", "CloudWatch metrics sent again after 2 failed attempts"),
    ]


async def test_a_hanging_put_times_out_and_calls_do_not_pile_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=METRICS_LOGGER)

    class Hanging:
        def __init__(self) -> None:
            self.entered = 0
            self.release = threading.Event()

        def put_metric_data(self, **request: Any) -> None:
            self.entered += 1
            self.release.wait(10)

    hanging = Hanging()
    settings = MetricsSettings(interval=0.2, put_timeout=0.2, retry_initial=0.05, retry_max=0.05)
    emitter = MetricsEmitter(settings, ActivityTracker(), client_factory=lambda _: hanging)
    seen = Warnings(target=3)
    logging.getLogger(METRICS_LOGGER).addHandler(seen)
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(emitter.run)
                await seen.reached.wait()
                nursery.cancel_scope.cancel()
    finally:
        hanging.release.set()
        logging.getLogger(METRICS_LOGGER).removeHandler(seen)
    assert hanging.entered == 1, "a new put waits for the abandoned one to end"
    assert emitter.statistics() == MetricsStatistics(sent=0, failed=3, consecutive_failures=3)
    messages = [r.getMessage() for r in caplog.records if r.name == METRICS_LOGGER]
    assert (
        messages
        == ["CloudWatch metrics not sent (timed out after 0.2 s); next attempt in 0.05 s"] * 3
    )
