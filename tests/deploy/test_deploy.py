"""`fluidity deploy` / `fluidity destroy` against moto_server: what moto models is asserted here.

moto creates the VPC, subnets, route, security group, ECR repository, log groups, IAM roles,
ECS cluster, task definition and service, the Lambda functions and their permissions, the REST
API with its resources and methods, and (through moto_shim.py) the API key. It skips usage
plans, usage plan keys, API stages and the Scheduler schedules, and drops the Fargate settings
of task definitions and services (network mode, CPU/memory, roles, launch type, network
configuration): those are checked on the templates in test_templates.py. On stack deletion it
keeps the ECS cluster, service and task definition and the REST API.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from fluidity.agent.settings import AgentConfig
from fluidity.settings import load_config
from tests.deploy.conftest import (
    ACCOUNT,
    REGION,
    Emulator,
    Fluidity,
    secret_json,
    stack_outputs,
    stack_parameters,
)

BUCKET = f"fluidity-artifacts-{ACCOUNT}-{REGION}"
DEPLOY = ["deploy", "--region", REGION, "--allowed-cidr", "203.0.113.7/32", "--create-bucket"]


def _stack_names(aws: Emulator) -> set[str]:
    stacks = aws.client("cloudformation").describe_stacks()["Stacks"]
    return {s["StackName"] for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"}


def test_deploy_creates_both_stacks_and_writes_the_agent_config(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path, workdir: Path
) -> None:
    result = fluidity([*DEPLOY, "--yes"])
    assert result.exit_code == 0, result.output
    assert _stack_names(aws) == {"fluidity-fargate", "fluidity-lambda"}
    assert "fluidity-fargate: create, 17 change(s)" in result.output
    assert "Add     Service                      AWS::ECS::Service" in result.output
    assert "CREATE_COMPLETE" in result.output

    # The server side, as moto models it.
    fargate = stack_outputs(aws, "fluidity-fargate")
    assert fargate["ClusterName"] == "fluidity"
    assert fargate["ServiceName"] == "fluidity-server"
    assert fargate["TunnelPort"] == "8443"
    ecs = aws.client("ecs")
    service = ecs.describe_services(cluster="fluidity", services=["fluidity-server"])
    assert service["services"][0]["desiredCount"] == 0
    task_definition = ecs.describe_task_definition(taskDefinition="fluidity-server")
    container = task_definition["taskDefinition"]["containerDefinitions"][0]
    assert container["image"] == fargate["RepositoryUri"] + ":latest"
    environment = {e["name"]: e["value"] for e in container["environment"]}
    assert environment["FLUIDITY_SERVICE_NAME"] == "fluidity-server"
    assert environment["FLUIDITY_METRICS_ENABLED"] == "true"
    secret_arn = stack_parameters(aws, "fluidity-fargate")["TlsSecretArn"]
    assert {s["name"]: s["valueFrom"] for s in container["secrets"]} == {
        "FLUIDITY_SERVER_CERT": f"{secret_arn}:server_cert::",
        "FLUIDITY_SERVER_KEY": f"{secret_arn}:server_key::",
        "FLUIDITY_CA_CERT": f"{secret_arn}:ca_cert::",
    }
    groups = aws.client("ec2").describe_security_groups(GroupIds=[fargate["SecurityGroupId"]])[
        "SecurityGroups"
    ]
    ingress = {
        (rule["FromPort"], r["CidrIp"])
        for rule in groups[0]["IpPermissions"]
        for r in rule["IpRanges"]
    }
    assert ingress == {(8443, "203.0.113.7/32"), (8081, "10.42.0.0/16")}
    assert aws.client("ecr").describe_repositories()["repositories"][0]["repositoryName"] == (
        "fluidity-server"
    )

    # The certificates, as one JSON secret.
    tls = secret_json(aws, "fluidity/server-tls")
    assert tls["server_cert"] == (certs_dir / "server.pem").read_text()
    assert tls["server_key"] == (certs_dir / "server-key.pem").read_text()
    assert tls["ca_cert"] == (certs_dir / "ca.pem").read_text()

    # The control plane, as moto models it.
    functions = {f["FunctionName"]: f for f in aws.client("lambda").list_functions()["Functions"]}
    assert sorted(functions) == [
        "fluidity-lambda-kill",
        "fluidity-lambda-sleep",
        "fluidity-lambda-status",
        "fluidity-lambda-wake",
    ]
    wake = functions["fluidity-lambda-wake"]
    assert wake["Handler"] == "fluidity_lambda.wake.handler"
    assert wake["Runtime"] == "python3.12"
    assert wake["Environment"]["Variables"] == {
        "CLUSTER_NAME": "fluidity",
        "SERVICE_NAME": "fluidity-server",
    }
    code_key = stack_parameters(aws, "fluidity-lambda")["CodeKey"]
    assert code_key.startswith("fluidity/lambda-")
    aws.client("s3").head_object(Bucket=BUCKET, Key=code_key)
    outputs = stack_outputs(aws, "fluidity-lambda")
    api_id = outputs["RestApiId"]
    assert outputs["ApiUrl"] == f"https://{api_id}.execute-api.{REGION}.amazonaws.com/v1"
    resources = aws.client("apigateway").get_resources(restApiId=api_id)["items"]
    methods = {(r["path"], m) for r in resources for m in r.get("resourceMethods", {})}
    assert methods == {("/wake", "POST"), ("/status", "GET"), ("/kill", "POST")}

    # The agent's config: what the agent needs, and nothing the agent would refuse.
    config_path = workdir / "fluidity-agent.yaml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    written = yaml.safe_load(config_path.read_text())
    key = aws.client("apigateway").get_api_key(apiKey=outputs["ApiKeyId"], includeValue=True)
    assert written == {
        "api_url": outputs["ApiUrl"],
        "api_key": key["value"],
        "server_name": "fluidity-server",
        "server_port": 8443,
        "ca_cert": str(certs_dir.resolve() / "ca.pem"),
        "client_cert": str(certs_dir.resolve() / "client.pem"),
        "client_key": str(certs_dir.resolve() / "client-key.pem"),
    }
    settings = load_config(AgentConfig, path=str(config_path), env={}, flags={})
    assert settings.api_url == outputs["ApiUrl"]
    assert "Next: python -m fluidity.agent --config fluidity-agent.yaml" in result.output


def test_second_run_updates_and_keeps_earlier_choices(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path
) -> None:
    assert fluidity([*DEPLOY, "--yes"]).exit_code == 0
    first_key = stack_parameters(aws, "fluidity-lambda")["CodeKey"]

    # No --allowed-cidr this time: the first run's value stays; new choices apply.
    result = fluidity(
        [
            "deploy",
            "--region",
            REGION,
            "--yes",
            "-p",
            "Cpu=512",
            "--sleep-schedule",
            "rate(10 minutes)",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "fluidity-fargate: update" in result.output
    assert "fluidity-lambda: update" in result.output
    assert "already there" in result.output  # same code, same key: no upload
    assert "secret fluidity/server-tls: unchanged" in result.output
    fargate = stack_parameters(aws, "fluidity-fargate")
    assert fargate["AllowedCidr"] == "203.0.113.7/32"
    assert fargate["Cpu"] == "512"
    control = stack_parameters(aws, "fluidity-lambda")
    assert control["SleepSchedule"] == "rate(10 minutes)"
    assert control["CodeKey"] == first_key
    assert _stack_names(aws) == {"fluidity-fargate", "fluidity-lambda"}


def test_new_certificates_update_the_secret(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path
) -> None:
    assert fluidity([*DEPLOY, "--yes"]).exit_code == 0
    assert fluidity(["certs", "init", "--dir", str(certs_dir), "--force"]).exit_code == 0
    result = fluidity(["deploy", "--region", REGION, "--yes"])
    assert result.exit_code == 0, result.output
    assert "secret fluidity/server-tls: updated" in result.output
    assert secret_json(aws, "fluidity/server-tls")["ca_cert"] == (certs_dir / "ca.pem").read_text()


def test_declining_the_changes_leaves_nothing_behind(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path
) -> None:
    result = fluidity(DEPLOY, input="n\n")
    assert result.exit_code == 1
    assert "Apply these changes to fluidity-fargate?" in result.output
    assert "fluidity-fargate: changes not applied" in result.output
    assert _stack_names(aws) == set()


def test_destroy_removes_everything(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path, workdir: Path
) -> None:
    assert fluidity([*DEPLOY, "--yes"]).exit_code == 0

    declined = fluidity(["destroy", "--region", REGION], input="n\n")
    assert declined.exit_code == 1
    assert "stack fluidity-lambda" in declined.output
    assert _stack_names(aws) == {"fluidity-fargate", "fluidity-lambda"}

    result = fluidity(["destroy", "--region", REGION], input="y\n")
    assert result.exit_code == 0, result.output
    assert _stack_names(aws) == set()
    # What moto deletes with a stack (it keeps the ECS cluster, service and task definition
    # and the REST API, which CloudFormation deletes too).
    assert aws.client("lambda").list_functions()["Functions"] == []
    assert aws.client("apigateway").get_api_keys()["items"] == []
    assert aws.client("ecr").describe_repositories()["repositories"] == []
    assert aws.client("logs").describe_log_groups()["logGroups"] == []
    assert aws.client("iam").list_roles()["Roles"] == []
    assert [v for v in aws.client("ec2").describe_vpcs()["Vpcs"] if not v["IsDefault"]] == []
    assert aws.client("secretsmanager").list_secrets()["SecretList"] == []
    buckets = aws.client("s3").list_buckets()["Buckets"]
    assert BUCKET not in {b["Name"] for b in buckets}

    again = fluidity(["destroy", "--region", REGION, "--yes"])
    assert again.exit_code == 0
    assert "Nothing of fluidity in us-east-1." in again.output
    # Local files are the user's.
    assert (workdir / "fluidity-agent.yaml").exists()


def test_destroy_keeps_a_bucket_it_did_not_create(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path
) -> None:
    aws.client("s3").create_bucket(Bucket="my-bucket")
    aws.client("s3").put_object(Bucket="my-bucket", Key="other/file", Body=b"mine")
    result = fluidity(
        ["deploy", "--region", REGION, "--allowed-cidr", "0.0.0.0/0", "--bucket", "my-bucket", "-y"]
    )
    assert result.exit_code == 0, result.output
    assert fluidity(["destroy", "--region", REGION, "--bucket", "my-bucket", "-y"]).exit_code == 0
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket="my-bucket")["Contents"]]
    assert keys == ["other/file"]


def test_two_prefixes_are_two_deployments(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path
) -> None:
    assert fluidity([*DEPLOY, "--yes"]).exit_code == 0
    result = fluidity([*DEPLOY, "--yes", "--stack-prefix", "work"])
    assert result.exit_code == 0, result.output
    assert _stack_names(aws) == {
        "fluidity-fargate",
        "fluidity-lambda",
        "work-fargate",
        "work-lambda",
    }
    assert Path("work-agent.yaml").exists()
    assert fluidity(["destroy", "--region", REGION, "--stack-prefix", "work", "-y"]).exit_code == 0
    assert _stack_names(aws) == {"fluidity-fargate", "fluidity-lambda"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--allowed-cidr is required for a new deployment"),
        (["--allowed-cidr", "203.0.113.7"], "give the prefix length"),
        (["--allowed-cidr", "10.0.0.1/8"], "has host bits set"),
        (["--allowed-cidr", "0.0.0.0/0", "-p", "Nope=1"], "unknown template parameter(s) Nope"),
        (["--allowed-cidr", "0.0.0.0/0", "-p", "CodeKey=x.zip"], "set by fluidity deploy itself"),
        (
            ["--allowed-cidr", "0.0.0.0/0", "--kill-schedule", "cron(0 23 * * * *)"],
            "KillSchedule: 'cron(0 23 * * * *)': exactly one of day-of-month and day-of-week",
        ),
        (
            ["--allowed-cidr", "0.0.0.0/0", "--sleep-schedule", "rate(1 minutes)"],
            "rate(1 minute)",
        ),
        (["--allowed-cidr", "0.0.0.0/0", "--stack-prefix", "Bad_Prefix"], "stack prefix"),
        (
            ["--allowed-cidr", "0.0.0.0/0", "--server-name", "other"],
            "not in the server certificate",
        ),
        (["--allowed-cidr", "0.0.0.0/0"], "pass --create-bucket"),
    ],
)
def test_bad_input_stops_before_anything_is_made(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path, args: list[str], message: str
) -> None:
    result = fluidity(["deploy", "--region", REGION, "--yes", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert _stack_names(aws) == set()
    assert aws.client("secretsmanager").list_secrets()["SecretList"] == []


def test_missing_certificates_say_how_to_make_them(
    fluidity: Fluidity, aws: Emulator, workdir: Path
) -> None:
    result = fluidity([*DEPLOY, "--yes"])
    assert result.exit_code == 1
    assert "run `fluidity certs init --dir certs` first" in result.output


def test_no_region_is_an_error(
    fluidity: Fluidity, aws: Emulator, certs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert "AWS_REGION" not in os.environ
    result = fluidity(["deploy", "--allowed-cidr", "0.0.0.0/0", "--yes"])
    assert result.exit_code == 1
    assert "no AWS region" in result.output
