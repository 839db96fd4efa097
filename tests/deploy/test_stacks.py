"""Stacks: what a failed stack operation shows (moto never fails one, so botocore's Stubber
plays CloudFormation here)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from fluidity.deploy import Aborted, DeployError, StackFailed
from fluidity.deploy.stacks import Stacks, StackSpec

NAME = "fluidity-fargate"
STACK_ID = f"arn:aws:cloudformation:us-east-1:123456789012:stack/{NAME}/1"
CHANGE_SET = "arn:aws:cloudformation:us-east-1:123456789012:changeSet/cs/1"


@pytest.fixture
def now() -> dt.datetime:
    """The test's start, read when it runs: the code under test keeps only events newer than
    the operation's start minus 60 s (a value read at import would age while the suite runs)."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def cfn() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "cloudformation",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def _stack(now: dt.datetime, status: str) -> dict[str, Any]:
    return {
        "Stacks": [
            {"StackName": NAME, "StackId": STACK_ID, "StackStatus": status, "CreationTime": now}
        ]
    }


def _event(
    now: dt.datetime, n: int, status: str, logical: str, reason: str | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "StackId": STACK_ID,
        "EventId": f"e{n}",
        "StackName": NAME,
        "LogicalResourceId": logical,
        "ResourceType": "AWS::ECS::Service"
        if logical == "Service"
        else "AWS::CloudFormation::Stack",
        "Timestamp": now + dt.timedelta(seconds=n),
        "ResourceStatus": status,
    }
    if reason:
        event["ResourceStatusReason"] = reason
    return event


def _not_found(stubber: Stubber) -> None:
    stubber.add_client_error(
        "describe_stacks",
        service_error_code="ValidationError",
        service_message=f"Stack with id {NAME} does not exist",
    )


def _change_set(stubber: Stubber) -> None:
    stubber.add_response("create_change_set", {"Id": CHANGE_SET, "StackId": STACK_ID})
    stubber.add_response(
        "describe_change_set",
        {
            "ChangeSetId": CHANGE_SET,
            "StackName": NAME,
            "Status": "CREATE_COMPLETE",
            "ExecutionStatus": "AVAILABLE",
            "Changes": [
                {
                    "Type": "Resource",
                    "ResourceChange": {
                        "Action": "Add",
                        "LogicalResourceId": "Service",
                        "ResourceType": "AWS::ECS::Service",
                    },
                }
            ],
        },
    )


SPEC = StackSpec(NAME, "{}", {"ServiceName": "fluidity-server"})


def test_failed_creation_shows_the_events_that_explain_it(
    cfn: tuple[Any, Stubber], now: dt.datetime
) -> None:
    client, stubber = cfn
    _not_found(stubber)
    _change_set(stubber)
    stubber.add_response("execute_change_set", {})
    failure = (
        'Resource handler returned message: "Invalid subnet" (HandlerErrorCode: InvalidRequest)'
    )
    events = [
        _event(now, 4, "ROLLBACK_COMPLETE", NAME),
        _event(now, 3, "CREATE_FAILED", "Service", failure),
        _event(now, 2, "CREATE_IN_PROGRESS", "Service"),
        _event(now, 1, "CREATE_IN_PROGRESS", NAME, "User Initiated"),
    ]
    stubber.add_response("describe_stack_events", {"StackEvents": events})
    stubber.add_response("describe_stacks", _stack(now, "ROLLBACK_COMPLETE"))
    stubber.add_response("describe_stack_events", {"StackEvents": events})
    printed: list[str] = []
    stacks = Stacks(client, printed.append, poll_interval=0, sleep=lambda _: None)

    with pytest.raises(StackFailed) as raised:
        stacks.deploy(SPEC, lambda name, changes: True)

    message = str(raised.value)
    assert "fluidity-fargate: create failed (ROLLBACK_COMPLETE)" in message
    assert "Stack events that explain it:" in message
    assert f"CREATE_FAILED        Service (AWS::ECS::Service): {failure}" in message
    assert len(raised.value.events) == 1  # only the failure with a reason
    # The progress printed on the way, oldest first.
    progress = [line for line in printed if line.startswith("  ") and ":" in line[:12]]
    assert [line.split()[1] for line in progress] == [
        "CREATE_IN_PROGRESS",
        "CREATE_IN_PROGRESS",
        "CREATE_FAILED",
        "ROLLBACK_COMPLETE",
    ]


def test_no_changes_is_not_an_error(cfn: tuple[Any, Stubber], now: dt.datetime) -> None:
    client, stubber = cfn
    stubber.add_response("describe_stacks", _stack(now, "UPDATE_COMPLETE"))
    stubber.add_response("describe_stack_events", {"StackEvents": []})
    stubber.add_response("create_change_set", {"Id": CHANGE_SET, "StackId": STACK_ID})
    stubber.add_response(
        "describe_change_set",
        {
            "ChangeSetId": CHANGE_SET,
            "StackName": NAME,
            "Status": "FAILED",
            "StatusReason": "The submitted information didn't contain changes. Submit different "
            "information to create a change set.",
        },
    )
    stubber.add_response("delete_change_set", {})
    outputs = _stack(now, "UPDATE_COMPLETE")
    outputs["Stacks"][0]["Outputs"] = [{"OutputKey": "ClusterName", "OutputValue": "fluidity"}]
    stubber.add_response("describe_stacks", outputs)
    printed: list[str] = []
    result = Stacks(client, printed.append, poll_interval=0).deploy(SPEC, lambda n, c: True)
    assert result.action == "unchanged"
    assert result.outputs == {"ClusterName": "fluidity"}
    assert printed == [f"{NAME}: no changes"]


def test_a_change_set_aws_refuses_says_why(cfn: tuple[Any, Stubber]) -> None:
    client, stubber = cfn
    _not_found(stubber)
    stubber.add_client_error(
        "create_change_set",
        service_error_code="ValidationError",
        service_message="Parameter 'AllowedCidr' must match pattern ...",
    )
    with pytest.raises(
        DeployError,
        match="CreateChangeSet for fluidity-fargate failed: "
        "ValidationError: Parameter 'AllowedCidr' must match pattern",
    ):
        Stacks(client, print, poll_interval=0).deploy(SPEC, lambda n, c: True)


def test_a_busy_stack_is_left_alone(cfn: tuple[Any, Stubber], now: dt.datetime) -> None:
    client, stubber = cfn
    stubber.add_response("describe_stacks", _stack(now, "UPDATE_IN_PROGRESS"))
    with pytest.raises(DeployError, match="busy \\(UPDATE_IN_PROGRESS\\)"):
        Stacks(client, print, poll_interval=0).deploy(SPEC, lambda n, c: True)


def test_declining_a_creation_removes_the_empty_stack(cfn: tuple[Any, Stubber]) -> None:
    client, stubber = cfn
    _not_found(stubber)
    _change_set(stubber)
    stubber.add_response("delete_change_set", {})
    stubber.add_response("delete_stack", {})
    seen: list[str] = []

    def confirm(name: str, changes: Any) -> bool:
        seen.extend(str(c) for c in changes)
        return False

    with pytest.raises(Aborted):
        Stacks(client, print, poll_interval=0).deploy(SPEC, confirm)
    assert seen == ["Add     Service                      AWS::ECS::Service"]


def test_failed_deletion_shows_why(cfn: tuple[Any, Stubber], now: dt.datetime) -> None:
    client, stubber = cfn
    stubber.add_response("describe_stacks", _stack(now, "CREATE_COMPLETE"))
    stubber.add_response(
        "describe_stack_events", {"StackEvents": [_event(now, 1, "CREATE_COMPLETE", NAME)]}
    )
    stubber.add_response("delete_stack", {})
    reason = "The vpc 'vpc-1' has dependencies and cannot be deleted."
    events = [
        _event(now, 3, "DELETE_FAILED", NAME, "The following resource(s) failed to delete: [Vpc]."),
        _event(now, 2, "DELETE_FAILED", "Vpc", reason),
        _event(now, 1, "CREATE_COMPLETE", NAME),
    ]
    stubber.add_response("describe_stack_events", {"StackEvents": events})
    stubber.add_response("describe_stacks", _stack(now, "DELETE_FAILED"))
    stubber.add_response("describe_stack_events", {"StackEvents": events})
    with pytest.raises(StackFailed) as raised:
        Stacks(client, print, poll_interval=0).delete(NAME)
    assert "delete failed (DELETE_FAILED)" in str(raised.value)
    assert reason in str(raised.value)
