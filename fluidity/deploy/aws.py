"""Where the deployment goes (region, profile, endpoint) and the boto3 clients for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from fluidity.deploy.errors import DeployError


@attrs.frozen
class Target:
    """An AWS account and region, or an emulator standing in for them (`endpoint_url`)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None


class Aws:
    """The clients of one run, made on first use (never at import time)."""

    def __init__(self, target: Target) -> None:
        import boto3
        from botocore.exceptions import BotoCoreError

        self.target = target
        try:
            self._session = boto3.Session(profile_name=target.profile, region_name=target.region)
        except BotoCoreError as exc:
            raise DeployError(f"AWS profile {target.profile!r}: {exc}") from None
        region = self._session.region_name
        if not region:
            raise DeployError(
                "no AWS region: pass --region (or set AWS_REGION, or a region in your profile)"
            )
        self.region: str = region
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            self._clients[service] = self._session.client(
                service,
                endpoint_url=self.target.endpoint_url,
                config=Config(retries={"max_attempts": 8, "mode": "standard"}),
            )
        return self._clients[service]

    def account_id(self) -> str:
        with aws_errors("STS GetCallerIdentity (are your AWS credentials set?)"):
            account: str = self.client("sts").get_caller_identity()["Account"]
        return account


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Turn botocore's errors into a `DeployError` that says which call failed."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise DeployError(
            f"{what} failed: {error.get('Code', '?')}: {error.get('Message', exc)}"
        ) from None
    except BotoCoreError as exc:
        raise DeployError(f"{what} failed: {exc}") from None
