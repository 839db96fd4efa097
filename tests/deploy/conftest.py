"""Fixtures: an AWS emulator (moto_server, via tests/deploy/moto_shim.py) on loopback, fake
credentials that can never reach AWS, certificates, and a way to run `fluidity` commands."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import boto3
import pytest
from click.testing import CliRunner, Result

from fluidity import certs
from fluidity.cli import main
from tests.support.motoserver import moto_server

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account

_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _fake_aws_environment(env: dict[str, str]) -> dict[str, str]:
    for name in _AWS_VARIABLES:
        env.pop(name, None)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
    )
    return env


@attrs.frozen
class Emulator:
    """A running moto server: its endpoint, and clients pointed at it."""

    url: str

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """moto_server (with the gaps in moto_shim.py filled) on a free loopback port."""
    env = _fake_aws_environment(dict(os.environ))
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log_path, env, module="tests.deploy.moto_shim", cwd=REPO) as url:
        yield Emulator(url)


@pytest.fixture
def aws(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The emulator, emptied, with fake credentials in this process's environment."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in _fake_aws_environment({}).items():
        monkeypatch.setenv(name, value)
    emulator.reset()
    return emulator


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, like the one a person starts the walkthrough in."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def certs_dir(workdir: Path) -> Path:
    """certs/ as `fluidity certs init --dir certs` makes it."""
    certs.init_dir(workdir / "certs")
    return workdir / "certs"


@attrs.frozen
class Fluidity:
    """Runs `fluidity ...` in-process against the emulator."""

    emulator: Emulator

    def __call__(self, args: Sequence[str], *, input: str | None = None) -> Result:
        extra: list[str] = []
        if args and args[0] in ("deploy", "destroy"):
            extra = ["--endpoint-url", self.emulator.url, "--poll-interval", "0.01"]
        return CliRunner().invoke(main, [*args, *extra], input=input, catch_exceptions=False)


@pytest.fixture
def fluidity(aws: Emulator) -> Fluidity:
    return Fluidity(aws)


def stack_outputs(emulator: Emulator, name: str) -> dict[str, str]:
    stack = emulator.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def stack_parameters(emulator: Emulator, name: str) -> dict[str, str]:
    stack = emulator.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}


def secret_json(emulator: Emulator, name: str) -> dict[str, str]:
    value = emulator.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"]
    result: dict[str, str] = json.loads(value)
    return result
