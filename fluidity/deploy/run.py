"""The deploy and destroy procedures (steps in the package docstring)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml
from cryptography import x509

from fluidity import certs
from fluidity.deploy.aws import Aws, Target, aws_errors, error_code
from fluidity.deploy.bundle import lambda_zip_bytes, template_text
from fluidity.deploy.errors import DeployError
from fluidity.deploy.schedule import ScheduleError, parse_schedule
from fluidity.deploy.stacks import Confirm, Echo, Result, Stacks, StackSpec

PREFIX = re.compile(r"[a-z][a-z0-9-]{0,29}")
_CREATED_BY_TAG = "fluidity:created-by"
#: Parameters the tool sets itself, from the prefix and what it uploaded.
TOOL_PARAMETERS = frozenset({"ClusterName", "ServiceName", "TlsSecretArn", "CodeBucket", "CodeKey"})


@attrs.frozen
class Names:
    """Everything a deployment names after its prefix, so destroy finds it again."""

    prefix: str

    @property
    def fargate_stack(self) -> str:
        return f"{self.prefix}-fargate"

    @property
    def lambda_stack(self) -> str:
        return f"{self.prefix}-lambda"

    @property
    def cluster(self) -> str:
        return self.prefix

    @property
    def service(self) -> str:
        return f"{self.prefix}-server"

    @property
    def secret(self) -> str:
        return f"{self.prefix}/server-tls"

    @property
    def code_prefix(self) -> str:
        return f"{self.prefix}/"

    def default_bucket(self, account: str, region: str) -> str:
        return f"{self.prefix}-artifacts-{account}-{region}"


def check_prefix(prefix: str) -> Names:
    if not PREFIX.fullmatch(prefix):
        raise DeployError(
            f"stack prefix {prefix!r}: use 1-30 lowercase letters, digits and dashes, starting "
            "with a letter (it names stacks, the ECR repository and the bucket)"
        )
    return Names(prefix)


@attrs.frozen
class DeployOptions:
    target: Target
    names: Names
    certs_dir: Path
    config_out: Path
    allowed_cidr: str | None = None
    image: str | None = None
    server_name: str | None = None
    bucket: str | None = None
    create_bucket: bool = False
    #: Template parameters given by the user (options and --parameter), either stack.
    parameters: Mapping[str, str] = attrs.field(factory=dict)
    poll_interval: float = 5.0


@attrs.frozen
class Deployed:
    """What `deploy` made: enough to run the agent."""

    config_path: Path
    region: str
    api_url: str
    fargate: Result
    control_plane: Result
    repository_uri: str | None


def deploy(options: DeployOptions, echo: Echo, confirm: Confirm) -> Deployed:
    """Deploy (or update) everything and write the agent's config; see the package docs."""
    names = options.names
    fargate_template, lambda_template = template_text("fargate.yaml"), template_text("lambda.yaml")
    fargate_keys = _parameter_keys(fargate_template)
    lambda_keys = _parameter_keys(lambda_template)
    unknown = sorted(set(options.parameters) - fargate_keys - lambda_keys)
    if unknown:
        raise DeployError(
            f"unknown template parameter(s) {', '.join(unknown)}; fargate.yaml takes "
            f"{', '.join(sorted(fargate_keys))}; lambda.yaml takes {', '.join(sorted(lambda_keys))}"
        )
    reserved = sorted(TOOL_PARAMETERS & set(options.parameters))
    if reserved:
        raise DeployError(
            f"{', '.join(reserved)}: set by fluidity deploy itself (from --stack-prefix, the "
            "secret and the uploaded code), not by --parameter"
        )
    for key in ("SleepSchedule", "KillSchedule"):
        if key in options.parameters:
            _check_schedule(key, options.parameters[key])
    if options.allowed_cidr is not None:
        _check_cidr(options.allowed_cidr)
    tls = _read_certs(options.certs_dir)
    server_name = _server_name(tls.server_names, options.server_name)

    aws = Aws(options.target)
    echo(f"Deploying {names.prefix} to {aws.region}")
    account = aws.account_id()
    stacks = Stacks(aws.client("cloudformation"), echo, poll_interval=options.poll_interval)

    # What stays as it is unless given again: the values the stacks were deployed with.
    previous_fargate = stacks.parameters(names.fargate_stack)
    previous_lambda = stacks.parameters(names.lambda_stack)
    if not previous_fargate and options.allowed_cidr is None:
        raise DeployError(
            "--allowed-cidr is required for a new deployment: the addresses that may reach the "
            "tunnel port, e.g. your public address as 203.0.113.7/32 (curl "
            "https://checkip.amazonaws.com), or 0.0.0.0/0 if it changes (mTLS still guards "
            "the port)"
        )

    bucket = options.bucket or names.default_bucket(account, aws.region)
    _ensure_bucket(aws, bucket, create=options.create_bucket, names=names, echo=echo)
    code_key = _upload_code(aws, bucket, names, echo)
    secret_arn = _store_secret(aws, names, tls.secret_value(), echo)

    fargate_params = _merge(
        fargate_keys,
        previous_fargate,
        options.parameters,
        {
            "ClusterName": names.cluster,
            "ServiceName": names.service,
            "TlsSecretArn": secret_arn,
            **({"AllowedCidr": options.allowed_cidr} if options.allowed_cidr else {}),
            **({"ImageUri": options.image} if options.image is not None else {}),
        },
    )
    fargate = stacks.deploy(
        StackSpec(names.fargate_stack, fargate_template, fargate_params, _tags(names)), confirm
    )
    outputs = fargate.outputs
    lambda_params = _merge(
        lambda_keys,
        previous_lambda,
        options.parameters,
        {
            "CodeBucket": bucket,
            "CodeKey": code_key,
            "ClusterName": _output(outputs, "ClusterName", names.fargate_stack),
            "ServiceName": _output(outputs, "ServiceName", names.fargate_stack),
            "MetricsNamespace": fargate_params.get("MetricsNamespace", "Fluidity"),
        },
    )
    for key in ("SleepSchedule", "KillSchedule"):
        if key in lambda_params:
            _check_schedule(key, lambda_params[key])
    control = stacks.deploy(
        StackSpec(names.lambda_stack, lambda_template, lambda_params, _tags(names)), confirm
    )
    api_url = _output(control.outputs, "ApiUrl", names.lambda_stack)
    key_id = _output(control.outputs, "ApiKeyId", names.lambda_stack)
    with aws_errors(f"API Gateway GetApiKey {key_id}"):
        api_key = aws.client("apigateway").get_api_key(apiKey=key_id, includeValue=True)["value"]

    config_path = write_agent_config(
        options.config_out,
        api_url=api_url,
        api_key=api_key,
        server_name=server_name,
        server_port=int(outputs.get("TunnelPort", "8443")),
        certs_dir=options.certs_dir,
        header=f"stack prefix {names.prefix} in {aws.region}",
    )
    return Deployed(
        config_path, aws.region, api_url, fargate, control, outputs.get("RepositoryUri")
    )


@attrs.frozen
class DestroyOptions:
    target: Target
    names: Names
    bucket: str | None = None
    poll_interval: float = 5.0


def destroy(options: DestroyOptions, echo: Echo, confirm: Callable[[Sequence[str]], bool]) -> bool:
    """Delete what `deploy` made, after `confirm` saw the list; False if nothing was there."""
    names = options.names
    aws = Aws(options.target)
    account = aws.account_id()
    stacks = Stacks(aws.client("cloudformation"), echo, poll_interval=options.poll_interval)
    bucket = options.bucket or names.default_bucket(account, aws.region)

    found: list[str] = []
    if stacks.describe(names.lambda_stack) is not None:
        found.append(f"stack {names.lambda_stack} (functions, API, key, schedules, logs)")
    if stacks.describe(names.fargate_stack) is not None:
        found.append(
            f"stack {names.fargate_stack} (service, cluster, network, logs, the ECR repository "
            "and its images)"
        )
    secret = _find_secret(aws, names)
    if secret is not None:
        found.append(f"secret {names.secret}")
    objects = _code_objects(aws, bucket, names)
    if objects:
        found.append(f"{len(objects)} object(s) under s3://{bucket}/{names.code_prefix}")
    own_bucket = _bucket_created_by(aws, bucket) == names.prefix
    if own_bucket:
        found.append(f"bucket {bucket} (created by fluidity deploy), if nothing else is in it")
    if not found:
        echo(f"Nothing of {names.prefix} in {aws.region}.")
        return False
    echo(f"This deletes, in {aws.region}:")
    for line in found:
        echo(f"  - {line}")
    if not confirm(found):
        from fluidity.deploy.errors import Aborted

        raise Aborted("nothing deleted")

    for name in (names.lambda_stack, names.fargate_stack):
        if stacks.delete(name):
            echo(f"{name}: deleted")
    if secret is not None:
        with aws_errors(f"Secrets Manager DeleteSecret {names.secret}"):
            aws.client("secretsmanager").delete_secret(
                SecretId=secret, ForceDeleteWithoutRecovery=True
            )
        echo(f"secret {names.secret}: deleted")
    s3 = aws.client("s3")
    for start in range(0, len(objects), 1000):
        batch = [{"Key": key} for key in objects[start : start + 1000]]
        with aws_errors(f"S3 DeleteObjects in {bucket}"):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    if objects:
        echo(f"s3://{bucket}/{names.code_prefix}: {len(objects)} object(s) deleted")
    if own_bucket:
        with aws_errors(f"S3 ListObjectsV2 {bucket}"):
            rest = s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0)
        if rest:
            echo(f"bucket {bucket}: kept, it holds other objects")
        else:
            with aws_errors(f"S3 DeleteBucket {bucket}"):
                s3.delete_bucket(Bucket=bucket)
            echo(f"bucket {bucket}: deleted")
    return True


# -- certificates -----------------------------------------------------------------------------


@attrs.frozen
class Tls:
    """The PEM files of a `fluidity certs init` directory that the deployment needs."""

    directory: Path
    ca_cert: str
    server_cert: str
    server_key: str
    server_names: tuple[str, ...]

    def secret_value(self) -> str:
        return json.dumps(
            {
                "server_cert": self.server_cert,
                "server_key": self.server_key,
                "ca_cert": self.ca_cert,
            },
            sort_keys=True,
        )


def _read_certs(directory: Path) -> Tls:
    needed = [
        certs.CA_CERT,
        certs.SERVER_CERT,
        certs.SERVER_KEY,
        certs.CLIENT_CERT,
        certs.CLIENT_KEY,
    ]
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        raise DeployError(
            f"{directory} lacks {', '.join(missing)}: run `fluidity certs init --dir "
            f"{directory}` first"
        )
    server_cert = (directory / certs.SERVER_CERT).read_text()
    try:
        cert = x509.load_pem_x509_certificate(server_cert.encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise DeployError(
            f"{directory / certs.SERVER_CERT}: not a usable certificate: {exc}"
        ) from None
    names = tuple(san.get_values_for_type(x509.DNSName))
    if not names:
        raise DeployError(f"{directory / certs.SERVER_CERT} names no DNS name for the agent")
    return Tls(
        directory=directory,
        ca_cert=(directory / certs.CA_CERT).read_text(),
        server_cert=server_cert,
        server_key=(directory / certs.SERVER_KEY).read_text(),
        server_names=names,
    )


def _server_name(names: Sequence[str], wanted: str | None) -> str:
    if wanted is None:
        return names[0]
    if wanted not in names:
        raise DeployError(
            f"--server-name {wanted!r} is not in the server certificate ({', '.join(names)}); "
            "the agent would refuse the server"
        )
    return wanted


# -- inputs -----------------------------------------------------------------------------------


def _parameter_keys(template: str) -> set[str]:
    """The Parameters of a template (read without CloudFormation's tags: only keys matter)."""
    match = re.search(r"^Parameters:\n((?:[ #].*\n|\n)*)", template, re.MULTILINE)
    if not match:
        return set()
    return set(re.findall(r"^  ([A-Za-z0-9]+):", match.group(1), re.MULTILINE))


def _merge(
    keys: set[str],
    previous: Mapping[str, str],
    given: Mapping[str, str],
    computed: Mapping[str, str],
) -> dict[str, str]:
    """Previous values, then the user's, then the tool's own, for this template's keys."""
    merged = {k: v for k, v in previous.items() if k in keys}
    merged.update({k: v for k, v in given.items() if k in keys})
    merged.update({k: v for k, v in computed.items() if k in keys})
    return merged


def _check_schedule(key: str, expression: str) -> None:
    try:
        parse_schedule(expression)
    except ScheduleError as exc:
        raise DeployError(f"{key}: {exc}") from None


def _check_cidr(value: str) -> None:
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise DeployError(f"--allowed-cidr {value!r}: {exc} (e.g. 203.0.113.7/32)") from None
    if "/" not in value:
        raise DeployError(f"--allowed-cidr {value!r}: give the prefix length, e.g. {network}")


def _output(outputs: Mapping[str, str], key: str, stack: str) -> str:
    if key not in outputs:
        raise DeployError(f"stack {stack} has no output {key}; was it deployed by this version?")
    return outputs[key]


def _tags(names: Names) -> dict[str, str]:
    return {"project": "fluidity", _CREATED_BY_TAG: names.prefix}


# -- S3, the code, the secret -----------------------------------------------------------------


def _ensure_bucket(aws: Aws, bucket: str, *, create: bool, names: Names, echo: Echo) -> None:
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        code = error_code(exc)
        if code in ("403", "AccessDenied", "Forbidden"):
            raise DeployError(
                f"bucket {bucket} exists but is not yours to use (names are global): pass "
                "--bucket with another name"
            ) from None
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise DeployError(f"S3 HeadBucket {bucket}: {exc}") from None
    if not create:
        raise DeployError(
            f"bucket {bucket} does not exist: pass --create-bucket to create it, or --bucket "
            "with one you have"
        )
    with aws_errors(f"S3 CreateBucket {bucket}"):
        if aws.region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": aws.region}
            )
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_tagging(
            Bucket=bucket,
            Tagging={"TagSet": [{"Key": _CREATED_BY_TAG, "Value": names.prefix}]},
        )
    echo(f"bucket {bucket}: created")


def _bucket_created_by(aws: Aws, bucket: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        tags = aws.client("s3").get_bucket_tagging(Bucket=bucket)["TagSet"]
    except ClientError:
        return None
    return next((t["Value"] for t in tags if t["Key"] == _CREATED_BY_TAG), None)


def _upload_code(aws: Aws, bucket: str, names: Names, echo: Echo) -> str:
    """Upload the zip under its digest (a new digest is what updates the functions)."""
    from botocore.exceptions import ClientError

    data = lambda_zip_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = f"{names.code_prefix}lambda-{digest[:16]}.zip"
    s3 = aws.client("s3")
    try:
        s3.head_object(Bucket=bucket, Key=key)
        echo(f"code s3://{bucket}/{key}: already there (sha256 {digest[:16]})")
        return key
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise DeployError(f"S3 HeadObject {key}: {exc}") from None
    with aws_errors(f"S3 PutObject s3://{bucket}/{key}"):
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/zip")
    echo(f"code s3://{bucket}/{key}: uploaded ({len(data)} bytes, sha256 {digest[:16]})")
    return key


def _code_objects(aws: Aws, bucket: str, names: Names) -> list[str]:
    from botocore.exceptions import ClientError

    keys: list[str] = []
    try:
        pages = aws.client("s3").get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=names.code_prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    except ClientError:
        return []
    return keys


def _find_secret(aws: Aws, names: Names) -> str | None:
    from botocore.exceptions import ClientError

    try:
        described = aws.client("secretsmanager").describe_secret(SecretId=names.secret)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise DeployError(f"Secrets Manager DescribeSecret {names.secret}: {exc}") from None
    arn: str = described["ARN"]
    return arn


def _store_secret(aws: Aws, names: Names, value: str, echo: Echo) -> str:
    """Create or update the TLS secret; its ARN. Unchanged PEMs make no new version."""
    sm = aws.client("secretsmanager")
    arn = _find_secret(aws, names)
    if arn is None:
        with aws_errors(f"Secrets Manager CreateSecret {names.secret}"):
            created = sm.create_secret(
                Name=names.secret,
                Description="Fluidity server certificate, key and CA (PEM, JSON keys)",
                SecretString=value,
                Tags=[{"Key": _CREATED_BY_TAG, "Value": names.prefix}],
            )
        echo(f"secret {names.secret}: created")
        new_arn: str = created["ARN"]
        return new_arn
    with aws_errors(f"Secrets Manager GetSecretValue {names.secret}"):
        current = sm.get_secret_value(SecretId=arn).get("SecretString")
    if current == value:
        echo(f"secret {names.secret}: unchanged")
    else:
        with aws_errors(f"Secrets Manager PutSecretValue {names.secret}"):
            sm.put_secret_value(SecretId=arn, SecretString=value)
        echo(f"secret {names.secret}: updated (a running server keeps the old one until restart)")
    return arn


# -- the agent's config -----------------------------------------------------------------------


def write_agent_config(
    path: Path,
    *,
    api_url: str,
    api_key: str,
    server_name: str,
    server_port: int,
    certs_dir: Path,
    header: str,
) -> Path:
    """Write the agent's YAML config (mode 0600: it holds the API key) and check that the
    agent accepts it."""
    from fluidity.agent.settings import AgentConfig
    from fluidity.settings import ConfigError, load_config

    directory = certs_dir.resolve()
    settings: dict[str, Any] = {
        "api_url": api_url,
        "api_key": api_key,
        "server_name": server_name,
        "server_port": server_port,
        "ca_cert": str(directory / certs.CA_CERT),
        "client_cert": str(directory / certs.CLIENT_CERT),
        "client_key": str(directory / certs.CLIENT_KEY),
    }
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# Fluidity agent config written by `fluidity deploy` ({header}, {stamp}).\n"
        f"# Run the agent with: python -m fluidity.agent --config {path}\n"
        "# Every other agent setting keeps its default (docs/configuration.md); add them here.\n"
        + yaml.safe_dump(settings, sort_keys=False)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)
    try:
        load_config(AgentConfig, path=str(path), env={}, flags={})
    except ConfigError as exc:
        raise DeployError(f"the agent would refuse {path}: {exc}") from None
    return path
