"""The templates' wiring, read from the YAML: what moto does not model and cfn-lint does not
judge (who may invoke what, which ports are open, what the roles allow, the schedules)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluidity.deploy.schedule import parse_cron, parse_rate, parse_schedule
from fluidity.server.egress import EgressPolicy

CFN = Path(__file__).resolve().parents[2] / "cfn"


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, ...) turned into their long forms."""


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_Loader.add_multi_constructor("!", _construct)


def load(name: str) -> dict[str, Any]:
    with (CFN / name).open() as stream:
        template: dict[str, Any] = yaml.load(stream, Loader=_Loader)  # a SafeLoader subclass
    return template


@pytest.fixture(scope="module")
def fargate() -> dict[str, Any]:
    return load("fargate.yaml")


@pytest.fixture(scope="module")
def control() -> dict[str, Any]:
    return load("lambda.yaml")


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def actions(statement: dict[str, Any]) -> list[str]:
    value = statement["Action"]
    return [value] if isinstance(value, str) else list(value)


#: Parameters only the deployer can know; everything else has a default.
REQUIRED = {"TlsSecretArn", "CodeBucket", "CodeKey"}


@pytest.mark.parametrize("name", ["fargate.yaml", "lambda.yaml"])
def test_every_parameter_is_described_and_defaulted(name: str) -> None:
    for key, parameter in load(name)["Parameters"].items():
        assert len(parameter.get("Description", "")) > 20, f"{name}: {key} has no description"
        assert key in REQUIRED or "Default" in parameter, f"{name}: {key} has no default"


# -- fargate.yaml -----------------------------------------------------------------------------


def test_security_group_opens_only_the_tunnel_and_health_ports(fargate: dict[str, Any]) -> None:
    (group,) = resources(fargate, "AWS::EC2::SecurityGroup").values()
    ingress = group["Properties"]["SecurityGroupIngress"]
    opened = {(r["FromPort"]["Ref"], r["ToPort"]["Ref"], r["CidrIp"]["Ref"]) for r in ingress}
    assert opened == {
        ("TunnelPort", "TunnelPort", "AllowedCidr"),
        ("HealthPort", "HealthPort", "VpcCidr"),
    }
    assert all(r["IpProtocol"] == "tcp" for r in ingress)
    assert resources(fargate, "AWS::EC2::SecurityGroupIngress") == {}
    parameters = fargate["Parameters"]
    assert parameters["AllowedCidr"]["Default"] != "0.0.0.0/0"
    assert parameters["TunnelPort"]["Default"] == 8443
    assert parameters["HealthPort"]["Default"] == 8081


def test_task_role_may_only_put_metrics_in_its_namespace(fargate: dict[str, Any]) -> None:
    role = fargate["Resources"]["TaskRole"]
    (statement,) = statements(role)
    assert statement["Effect"] == "Allow"
    assert actions(statement) == ["cloudwatch:PutMetricData"]
    assert statement["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": {"Ref": "MetricsNamespace"}}
    }
    task = fargate["Resources"]["TaskDefinition"]["Properties"]
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}


def test_execution_role_reads_only_the_tls_secret(fargate: dict[str, Any]) -> None:
    by_sid = {s["Sid"]: s for s in statements(fargate["Resources"]["ExecutionRole"])}
    assert actions(by_sid["TlsSecret"]) == ["secretsmanager:GetSecretValue"]
    assert by_sid["TlsSecret"]["Resource"] == {"Ref": "TlsSecretArn"}
    every = [a for s in by_sid.values() for a in actions(s)]
    assert not any(a.endswith("*") for a in every)


def test_task_definition_is_fargate_sized_and_gets_the_pems_from_secrets(
    fargate: dict[str, Any],
) -> None:
    parameters = fargate["Parameters"]
    assert (parameters["Cpu"]["Default"], parameters["Memory"]["Default"]) == (256, 512)
    task = fargate["Resources"]["TaskDefinition"]["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    assert (task["Cpu"], task["Memory"]) == ({"Ref": "Cpu"}, {"Ref": "Memory"})
    (container,) = task["ContainerDefinitions"]
    secrets = {s["Name"]: s["ValueFrom"]["Fn::Sub"] for s in container["Secrets"]}
    assert secrets == {
        "FLUIDITY_SERVER_CERT": "${TlsSecretArn}:server_cert::",
        "FLUIDITY_SERVER_KEY": "${TlsSecretArn}:server_key::",
        "FLUIDITY_CA_CERT": "${TlsSecretArn}:ca_cert::",
    }
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["FLUIDITY_LISTEN_PORT"] == {"Ref": "TunnelPort"}
    assert environment["FLUIDITY_HEALTH_PORT"] == {"Ref": "HealthPort"}
    assert environment["FLUIDITY_METRICS_ENABLED"] == "true"
    assert environment["FLUIDITY_SERVICE_NAME"] == {"Ref": "ServiceName"}
    assert environment["FLUIDITY_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert environment["FLUIDITY_SHUTDOWN_GRACE"] == {"Ref": "ShutdownGrace"}
    # Not a single PEM in plain environment variables.
    assert not any("CERT" in k or "KEY" in k for k in environment)


def test_the_server_refuses_its_own_vpc_as_a_destination(fargate: dict[str, Any]) -> None:
    (container,) = fargate["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["FLUIDITY_EGRESS_DENY"] == {"Ref": "VpcCidr"}
    # What the server makes of it (with the default CIDR): refused even if egress_allow
    # opened the private ranges. The decision only: nothing connects.
    cidr = fargate["Parameters"]["VpcCidr"]["Default"]
    policy = EgressPolicy(allow=["10.0.0.0/8"], deny=[cidr])
    inside = str(next(ipaddress.ip_network(cidr).hosts()))
    assert policy.refusal(inside) == "egress_deny lists it"
    assert policy.allows("10.0.0.1")


def test_health_check_uses_the_health_port_and_stop_timeout_covers_the_drain(
    fargate: dict[str, Any],
) -> None:
    (container,) = fargate["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    command = container["HealthCheck"]["Command"]
    assert command[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:${HealthPort}/healthz" in command[3]["Fn::Sub"]
    compile(command[3]["Fn::Sub"].replace("${HealthPort}", "8081"), "healthcheck", "exec")
    assert container["StopTimeout"] == {"Ref": "StopTimeout"}
    parameters = fargate["Parameters"]
    assert parameters["StopTimeout"]["Default"] >= parameters["ShutdownGrace"]["Default"] + 5
    # The server's own default drain (docs/configuration.md) is 25 s.
    assert parameters["ShutdownGrace"]["Default"] == 25
    assert parameters["StopTimeout"]["MaxValue"] == 120  # Fargate's limit


def test_service_sleeps_with_a_public_ip(fargate: dict[str, Any]) -> None:
    service = fargate["Resources"]["Service"]["Properties"]
    assert service["DesiredCount"] == 0
    assert service["LaunchType"] == "FARGATE"
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "ENABLED"
    assert network["SecurityGroups"] == [{"Ref": "ServerSecurityGroup"}]
    assert service["DeploymentConfiguration"]["MaximumPercent"] == 100


def test_created_vpc_is_public_without_nat(fargate: dict[str, Any]) -> None:
    assert resources(fargate, "AWS::EC2::NatGateway") == {}
    route = fargate["Resources"]["DefaultRoute"]["Properties"]
    assert route["DestinationCidrBlock"] == "0.0.0.0/0"
    assert route["GatewayId"] == {"Ref": "InternetGateway"}
    for subnet in resources(fargate, "AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is True
        assert subnet["Condition"] == "CreateVpc"


def test_log_groups_have_retention(fargate: dict[str, Any], control: dict[str, Any]) -> None:
    groups = {
        **resources(fargate, "AWS::Logs::LogGroup"),
        **resources(control, "AWS::Logs::LogGroup"),
    }
    assert len(groups) == 5
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


# -- lambda.yaml ------------------------------------------------------------------------------

FUNCTIONS = {
    "WakeFunction": "fluidity_lambda.wake.handler",
    "StatusFunction": "fluidity_lambda.status.handler",
    "SleepFunction": "fluidity_lambda.sleep.handler",
    "KillFunction": "fluidity_lambda.kill.handler",
}


def test_functions_run_the_handlers_from_the_zip(control: dict[str, Any]) -> None:
    functions = resources(control, "AWS::Lambda::Function")
    assert {k: f["Properties"]["Handler"] for k, f in functions.items()} == FUNCTIONS
    runtimes = control["Parameters"]["LambdaRuntime"]
    assert all(
        tuple(map(int, r.removeprefix("python").split("."))) >= (3, 12)
        for r in runtimes["AllowedValues"]
    )
    roles = set()
    for function in functions.values():
        properties = function["Properties"]
        assert properties["Code"] == {
            "S3Bucket": {"Ref": "CodeBucket"},
            "S3Key": {"Ref": "CodeKey"},
        }
        variables = properties["Environment"]["Variables"]
        assert variables["CLUSTER_NAME"] == {"Ref": "ClusterName"}
        assert variables["SERVICE_NAME"] == {"Ref": "ServiceName"}
        roles.add(properties["Role"]["Fn::GetAtt"][0])
    assert len(roles) == 4, "one role per function"
    sleep = functions["SleepFunction"]["Properties"]["Environment"]["Variables"]
    assert sleep["IDLE_THRESHOLD_MINUTES"] == {"Ref": "IdleThresholdMinutes"}
    assert sleep["WAKE_GRACE_MINUTES"] == {"Ref": "WakeGraceMinutes"}
    assert sleep["METRIC_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert control["Parameters"]["IdleThresholdMinutes"]["Default"] == 15
    assert control["Parameters"]["WakeGraceMinutes"]["Default"] == 10


SERVICE_ARN = (
    "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}"
    ":service/${ClusterName}/${ServiceName}"
)


@pytest.mark.parametrize(
    ("role", "changes", "metrics"),
    [
        ("WakeRole", {"ecs:UpdateService", "ecs:TagResource"}, False),
        ("StatusRole", set(), False),
        ("SleepRole", {"ecs:UpdateService"}, True),
        ("KillRole", {"ecs:UpdateService"}, False),
    ],
)
def test_each_role_touches_only_its_service(
    control: dict[str, Any], role: str, changes: set[str], metrics: bool
) -> None:
    granted: dict[str, Any] = {}
    for statement in statements(control["Resources"][role]):
        assert statement["Effect"] == "Allow"
        for action in actions(statement):
            assert "*" not in action
            granted[action] = statement
    reads = {"ecs:DescribeServices", "ecs:ListTagsForResource"}
    assert set(granted) == (
        reads
        | changes
        | {"ecs:ListTasks", "ecs:DescribeTasks", "ec2:DescribeNetworkInterfaces"}
        | {"logs:CreateLogStream", "logs:PutLogEvents"}
        | ({"cloudwatch:GetMetricData"} if metrics else set())
    )
    for action in reads | changes:
        assert granted[action]["Resource"] == {"Fn::Sub": SERVICE_ARN}, action
    assert granted["ecs:ListTasks"]["Condition"]["ArnEquals"]["ecs:cluster"]["Fn::Sub"].endswith(
        ":cluster/${ClusterName}"
    )
    assert granted["ecs:DescribeTasks"]["Resource"]["Fn::Sub"].endswith(":task/${ClusterName}/*")
    own_logs = role.replace("Role", "LogGroup")
    assert granted["logs:PutLogEvents"]["Resource"] == {"Fn::GetAtt": [own_logs, "Arn"]}


ROUTES = {
    "WakeMethod": ("POST", "WakeResource", "wake", "WakeFunction"),
    "StatusMethod": ("GET", "StatusResource", "status", "StatusFunction"),
    "KillMethod": ("POST", "KillResource", "kill", "KillFunction"),
}


def test_api_methods_require_the_key_and_reach_their_function(control: dict[str, Any]) -> None:
    methods = resources(control, "AWS::ApiGateway::Method")
    assert set(methods) == set(ROUTES)
    permissions = {
        p["Properties"]["FunctionName"]["Ref"]: p["Properties"]
        for p in resources(control, "AWS::Lambda::Permission").values()
    }
    for name, (verb, resource, path, function) in ROUTES.items():
        method = methods[name]["Properties"]
        assert method["HttpMethod"] == verb
        assert method["ApiKeyRequired"] is True
        assert method["ResourceId"] == {"Ref": resource}
        assert control["Resources"][resource]["Properties"]["PathPart"] == path
        assert method["Integration"]["Type"] == "AWS_PROXY"
        assert f"${{{function}.Arn}}" in method["Integration"]["Uri"]["Fn::Sub"]
        permission = permissions[function]
        assert permission["Principal"] == "apigateway.amazonaws.com"
        assert permission["SourceArn"]["Fn::Sub"].endswith(f"${{Api}}/*/{verb}/{path}")
    assert "SleepFunction" not in permissions, "Sleep is for the scheduler only"


def test_usage_plan_throttles_and_caps_the_key(control: dict[str, Any]) -> None:
    (plan,) = resources(control, "AWS::ApiGateway::UsagePlan").values()
    properties = plan["Properties"]
    assert properties["Throttle"] == {
        "RateLimit": {"Ref": "ThrottleRateLimit"},
        "BurstLimit": {"Ref": "ThrottleBurstLimit"},
    }
    assert properties["Quota"] == {"Limit": {"Ref": "DailyQuota"}, "Period": "DAY"}
    assert properties["ApiStages"] == [{"ApiId": {"Ref": "Api"}, "Stage": {"Ref": "StageName"}}]
    (key,) = resources(control, "AWS::ApiGateway::UsagePlanKey").values()
    assert key["Properties"]["KeyId"] == {"Ref": "ApiKey"}
    assert key["Properties"]["UsagePlanId"] == {"Ref": "UsagePlan"}
    (stage,) = resources(control, "AWS::ApiGateway::Stage").values()
    assert stage["Properties"]["StageName"] == {"Ref": "StageName"}
    outputs = control["Outputs"]
    assert outputs["ApiKeyId"]["Value"] == {"Ref": "ApiKey"}
    assert "${Api}.execute-api.${AWS::Region}" in outputs["ApiUrl"]["Value"]["Fn::Sub"]


def test_schedules_invoke_sleep_and_kill_through_a_role_for_exactly_those(
    control: dict[str, Any],
) -> None:
    schedules = resources(control, "AWS::Scheduler::Schedule")
    targets = {
        k: (s["Properties"]["ScheduleExpression"]["Ref"], s["Properties"]["Target"])
        for k, s in schedules.items()
    }
    assert {k: (expr, t["Arn"]["Fn::GetAtt"][0]) for k, (expr, t) in targets.items()} == {
        "SleepCheckSchedule": ("SleepSchedule", "SleepFunction"),
        "DailyKillSchedule": ("KillSchedule", "KillFunction"),
    }
    for _, target in targets.values():
        assert target["RoleArn"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    role = control["Resources"]["SchedulerRole"]
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    (statement,) = statements(role)
    assert actions(statement) == ["lambda:InvokeFunction"]
    assert statement["Resource"] == [
        {"Fn::GetAtt": ["SleepFunction", "Arn"]},
        {"Fn::GetAtt": ["KillFunction", "Arn"]},
    ]


def test_schedule_defaults_are_valid_eventbridge_expressions(control: dict[str, Any]) -> None:
    parameters = control["Parameters"]
    sleep = parse_rate(parameters["SleepSchedule"]["Default"])
    assert str(sleep) == "rate(5 minutes)"
    kill = parse_cron(parameters["KillSchedule"]["Default"])
    assert kill.hours == {23}
    assert kill.minutes == {0}
    for key in ("SleepSchedule", "KillSchedule"):
        parse_schedule(parameters[key]["Default"])
    assert parameters["ScheduleTimezone"]["Default"] == "UTC"
