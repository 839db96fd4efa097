"""The whole control plane on loopback: moto, API Gateway, EventBridge and Fargate stand-ins.

`run_local_cloud()` provisions what cfn/ defines (as far as the control plane sees it), builds
the Lambda zip and serves its handlers, and yields a `LocalCloud` with everything an agent
needs to connect. Times from the templates are scaled: with `time_scale` 60 a minute of
schedule time (sleep checks, idle threshold, grace period, metric interval) is a second.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from fluidity import certs
from fluidity.deploy.bundle import CFN_DIR

from .apigateway import ApiGateway
from .aws import LocalAws
from .fargate import FargateStandIn
from .lambdas import build_zip, load_handlers
from .scheduler import SchedulerStandIn
from .template import load_template, parameter_default, schedules

log = logging.getLogger(__name__)

_PERIODS = (1, 5, 10, 30, 60)


@attrs.frozen
class CloudSettings:
    """How the local cloud imitates AWS."""

    #: Schedule seconds per real second (60: a minute of schedule time per second).
    time_scale: float = 60.0
    #: Seconds from desiredCount 1 to a started server process (Fargate's cold start).
    start_delay: float = 2.0
    #: Seconds the server gets to drain after SIGTERM before SIGKILL.
    stop_timeout: float = 10.0
    api_key: str = "local-api-key"
    #: API Gateway usage plan; None takes the template's defaults.
    rate: float | None = None
    burst: int | None = None
    #: Extra environment for the server processes (tests allow loopback egress with it).
    server_env: Mapping[str, str] = attrs.field(factory=dict)
    #: Loopback ports of moto, the API and the server's TLS listener (0: free ones).
    aws_port: int = 0
    api_port: int = 0
    server_port: int = 0


@attrs.define
class LocalCloud:
    settings: CloudSettings
    workdir: Path
    aws: LocalAws
    gateway: ApiGateway
    gateway_url: str
    scheduler: SchedulerStandIn
    fargate: FargateStandIn
    server_port: int
    cert_dir: Path

    def cert(self, name: str) -> str:
        return str(self.cert_dir / name)

    def agent_args(self, listen_port: int = 8080) -> list[str]:
        """`python -m fluidity.agent` arguments for an agent using this cloud."""
        return [
            "--listen-host", "127.0.0.1", "--listen-port", str(listen_port),
            "--api-url", self.gateway_url, "--api-key", self.settings.api_key,
            "--server-host", "127.0.0.1", "--server-port", str(self.server_port),
            "--client-cert", self.cert("client.pem"), "--client-key", self.cert("client-key.pem"),
            "--ca-cert", self.cert("ca.pem"),
            "--connection-retry-interval", "1", "--connection-timeout", "60",
        ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _scaled_minutes(minutes: float, scale: float) -> str:
    return f"{minutes * 60 / scale / 60:.4f}"


def _period(scale: float) -> int:
    """The coarsest CloudWatch period that still resolves a scaled minute."""
    return max(p for p in _PERIODS if p <= max(1.0, 60 / scale))


def _prepare(workdir: Path) -> Path:
    """The state directory and the certificates (made once, then reused)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert_dir = workdir / "certs"
    if not (cert_dir / "ca.pem").exists():
        certs.init_dir(cert_dir)
    return cert_dir


@asynccontextmanager
async def run_local_cloud(settings: CloudSettings, workdir: Path) -> AsyncIterator[LocalCloud]:
    """Run the local cloud for the body of the `async with`; everything stops at the end."""
    cert_dir = await trio.to_thread.run_sync(_prepare, workdir)
    fargate_t = load_template(CFN_DIR / "fargate.yaml")
    lambda_t = load_template(CFN_DIR / "lambda.yaml")
    aws = LocalAws(
        cluster=str(parameter_default(lambda_t, "ClusterName")),
        service=str(parameter_default(lambda_t, "ServiceName")),
    )
    saved_env = dict(os.environ)
    endpoint = await trio.to_thread.run_sync(aws.start, settings.aws_port)
    try:
        await trio.to_thread.run_sync(aws.provision)
        scale = settings.time_scale
        namespace = str(parameter_default(lambda_t, "MetricsNamespace"))
        os.environ.update(
            {
                "CLUSTER_NAME": aws.cluster,
                "SERVICE_NAME": aws.service,
                "IDLE_THRESHOLD_MINUTES": _scaled_minutes(
                    float(parameter_default(lambda_t, "IdleThresholdMinutes")), scale
                ),
                "WAKE_GRACE_MINUTES": _scaled_minutes(
                    float(parameter_default(lambda_t, "WakeGraceMinutes")), scale
                ),
                "METRIC_NAMESPACE": namespace,
                "METRIC_PERIOD_SECONDS": str(_period(scale)),
            }
        )
        handlers = load_handlers(await trio.to_thread.run_sync(build_zip, workdir / "lambda.zip"))
        gateway = ApiGateway(
            {
                ("POST", "/wake"): handlers["wake"],
                ("GET", "/status"): handlers["status"],
                ("POST", "/kill"): handlers["kill"],
            },
            api_key=settings.api_key,
            rate=settings.rate or float(parameter_default(lambda_t, "ThrottleRateLimit")),
            burst=settings.burst or int(parameter_default(lambda_t, "ThrottleBurstLimit")),
            stage=str(parameter_default(lambda_t, "StageName")),
        )
        server_port = settings.server_port or _free_port()

        def cert(name: str) -> str:
            return str(cert_dir / name)

        server_args = [
            "--listen-host", "127.0.0.1", "--listen-port", str(server_port),
            "--health-host", "127.0.0.1", "--health-port", "0",
            "--server-cert", cert("server.pem"), "--server-key", cert("server-key.pem"),
            "--ca-cert", cert("ca.pem"),
            "--metrics-enabled", "--metrics-interval", f"{max(0.2, 60 / scale):g}",
            "--metrics-namespace", namespace, "--service-name", aws.service,
            "--aws-region", "us-east-1", "--aws-endpoint-url", endpoint,
            "--shutdown-grace", f"{max(1.0, settings.stop_timeout - 1):g}",
        ]  # fmt: skip
        del fargate_t  # the stop timeout and ports come from the settings locally
        fargate = FargateStandIn(
            aws,
            server_args,
            workdir,
            env={**aws.env, **settings.server_env},
            start_delay=settings.start_delay,
            stop_timeout=settings.stop_timeout,
        )
        scheduler = SchedulerStandIn(schedules(lambda_t), handlers, time_scale=scale)
        async with trio.open_nursery() as nursery:
            gateway_port = await nursery.start(
                functools.partial(gateway.serve, port=settings.api_port)
            )
            await nursery.start(fargate.run)
            await nursery.start(scheduler.run)
            cloud = LocalCloud(
                settings,
                workdir,
                aws,
                gateway,
                f"http://127.0.0.1:{gateway_port}",
                scheduler,
                fargate,
                server_port,
                cert_dir,
            )
            log.info("local cloud: AWS (moto) at %s, API at %s, time scale %gx",
                     endpoint, cloud.gateway_url, scale)  # fmt: skip
            yield cloud
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(aws.stop)
        os.environ.clear()
        os.environ.update(saved_env)


def describe(cloud: LocalCloud) -> dict[str, Any]:
    """What is running where, for people."""
    return {
        "aws_endpoint": cloud.aws.endpoint,
        "api_url": cloud.gateway_url,
        "api_key": cloud.settings.api_key,
        "server_port": cloud.server_port,
        "time_scale": cloud.settings.time_scale,
        "schedules": {s.name: s.expression for s in cloud.scheduler.schedules},
    }
