"""The click commands `fluidity deploy` and `fluidity destroy`.

Only click is imported here, so `fluidity --help` stays quick; boto3 comes in when a command
runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _target_options(function: F) -> F:
    options = [
        click.option(
            "--region",
            envvar="AWS_REGION",
            help="AWS region (default: AWS_REGION, else your profile's region).",
        ),
        click.option("--profile", help="AWS profile from ~/.aws/config (default: the SDK's)."),
        click.option(
            "--stack-prefix",
            default="fluidity",
            show_default=True,
            help="Names the stacks (<prefix>-fargate, <prefix>-lambda), the cluster, the "
            "service, the secret and the code in S3; one deployment per prefix and region.",
        ),
        click.option(
            "--bucket",
            help="S3 bucket for the Lambda code (default: <prefix>-artifacts-<account>-<region>).",
        ),
        click.option(
            "--endpoint-url",
            help="Send every AWS call to this endpoint instead (an emulator, for tests).",
        ),
        click.option(
            "--yes", "-y", "assume_yes", is_flag=True, help="Do not ask before changing things."
        ),
        click.option(
            "--poll-interval",
            type=click.FloatRange(0.01, 60),
            default=5.0,
            hidden=True,
            help="Seconds between progress polls.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _parameter(value: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{value!r} is not KEY=VALUE")
    return key, rest


@click.command("deploy")
@_target_options
@click.option(
    "--certs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Directory made by `fluidity certs init`.",
)
@click.option(
    "--config-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the agent's config (default: <prefix>-agent.yaml).",
)
@click.option(
    "--allowed-cidr",
    help="IPv4 CIDR block allowed to reach the tunnel port, e.g. your address as "
    "203.0.113.7/32. Required the first time; kept on later runs.",
)
@click.option(
    "--image",
    help="Server image URI. Default: the stack's own ECR repository, tag latest (push to it, "
    "see docs/deployment.md).",
)
@click.option(
    "--server-name",
    help="Name the agent checks in the server certificate (default: its first DNS name).",
)
@click.option("--create-bucket", is_flag=True, help="Create the S3 bucket if it does not exist.")
@click.option(
    "--sleep-schedule", help="When to check for idleness, e.g. 'rate(5 minutes)' (the default)."
)
@click.option(
    "--kill-schedule", help="Daily stop, EventBridge cron, e.g. 'cron(0 23 * * ? *)' (default)."
)
@click.option("--schedule-timezone", help="IANA time zone of both schedules (default UTC).")
@click.option(
    "--idle-minutes",
    type=click.IntRange(1, 1440),
    help="Minutes without activity before the server is stopped (default 15).",
)
@click.option(
    "--parameter",
    "-p",
    "parameters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other template parameter (e.g. Cpu=512, CpuArchitecture=ARM64); repeatable.",
)
def deploy_command(
    region: str | None,
    profile: str | None,
    stack_prefix: str,
    bucket: str | None,
    endpoint_url: str | None,
    assume_yes: bool,
    poll_interval: float,
    certs_dir: Path,
    config_out: Path | None,
    allowed_cidr: str | None,
    image: str | None,
    server_name: str | None,
    create_bucket: bool,
    sleep_schedule: str | None,
    kill_schedule: str | None,
    schedule_timezone: str | None,
    idle_minutes: int | None,
    parameters: Sequence[str],
) -> None:
    """Deploy the server (ECS Fargate) and its control plane (Lambda, API Gateway, schedules).

    Builds and uploads the Lambda code, stores the server's certificates in Secrets Manager,
    creates or updates the stacks through change sets (shown first; --yes skips the
    question), and writes the agent's config. Run it again to update; `fluidity destroy`
    removes everything.
    """
    from fluidity.deploy import DeployError, run
    from fluidity.deploy.aws import Target

    given = dict(_parameter(p) for p in parameters)
    for key, value in (
        ("SleepSchedule", sleep_schedule),
        ("KillSchedule", kill_schedule),
        ("ScheduleTimezone", schedule_timezone),
        ("IdleThresholdMinutes", None if idle_minutes is None else str(idle_minutes)),
    ):
        if value is not None:
            given[key] = value
    try:
        names = run.check_prefix(stack_prefix)
        options = run.DeployOptions(
            target=Target(region=region, profile=profile, endpoint_url=endpoint_url),
            names=names,
            certs_dir=certs_dir,
            config_out=config_out or Path(f"{stack_prefix}-agent.yaml"),
            allowed_cidr=allowed_cidr,
            image=image,
            server_name=server_name,
            bucket=bucket,
            create_bucket=create_bucket,
            parameters=given,
            poll_interval=poll_interval,
        )
        deployed = run.deploy(options, click.echo, _confirm_changes(assume_yes))
    except DeployError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"\nAPI: {deployed.api_url}")
    click.echo(f"Agent config: {deployed.config_path} (holds the API key; mode 0600)")
    if deployed.repository_uri:
        registry = deployed.repository_uri.split("/", 1)[0]
        click.echo(
            "Image: push the server image before the first wake (docs/deployment.md):\n"
            f"  aws ecr get-login-password --region {deployed.region} | docker login --username "
            f"AWS --password-stdin {registry}\n"
            f"  docker build -f deploy/server.Dockerfile -t {deployed.repository_uri}:latest .\n"
            f"  docker push {deployed.repository_uri}:latest"
        )
    click.echo(f"\nNext: python -m fluidity.agent --config {deployed.config_path}")


@click.command("destroy")
@_target_options
def destroy_command(
    region: str | None,
    profile: str | None,
    stack_prefix: str,
    bucket: str | None,
    endpoint_url: str | None,
    assume_yes: bool,
    poll_interval: float,
) -> None:
    """Delete everything `fluidity deploy` made for --stack-prefix (asks first; --yes skips).

    The stacks (the ECR repository and its images with them), the TLS secret, the uploaded
    code, and the bucket if deploy created it and nothing else is in it. Local files (the
    certificates, the agent's config) stay.
    """
    from fluidity.deploy import DeployError, run
    from fluidity.deploy.aws import Target

    def confirm(found: Sequence[str]) -> bool:
        return assume_yes or click.confirm("Delete all of this?", default=False)

    try:
        options = run.DestroyOptions(
            target=Target(region=region, profile=profile, endpoint_url=endpoint_url),
            names=run.check_prefix(stack_prefix),
            bucket=bucket,
            poll_interval=poll_interval,
        )
        run.destroy(options, click.echo, confirm)
    except DeployError as exc:
        raise click.ClickException(str(exc)) from None


def _confirm_changes(assume_yes: bool) -> Callable[[str, Sequence[Any]], bool]:
    def confirm(stack: str, changes: Sequence[Any]) -> bool:
        if assume_yes:
            return True
        return click.confirm(f"Apply these changes to {stack}?", default=False)

    return confirm
