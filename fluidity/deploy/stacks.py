"""CloudFormation through change sets: show the changes, apply them, follow the events.

A change set, unlike a direct CreateStack/UpdateStack, lets the person see what would be
added, modified or replaced (and say no) before anything happens. While a stack operation
runs, its new events are printed as they come; when it fails, the events with a failure
reason are collected into the error, since they, not the final status, say what went wrong.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from fluidity.deploy.aws import aws_errors, error_code
from fluidity.deploy.errors import Aborted, DeployError, StackFailed

Echo = Callable[[str], None]
#: Shown the stack name and its changes; answers whether to apply them.
Confirm = Callable[[str, Sequence["Change"]], bool]

_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
_FAILED_STATES = frozenset(
    {
        "CREATE_FAILED",
        "ROLLBACK_COMPLETE",
        "ROLLBACK_FAILED",
        "DELETE_FAILED",
        "UPDATE_FAILED",
        "UPDATE_ROLLBACK_COMPLETE",
        "UPDATE_ROLLBACK_FAILED",
        "IMPORT_ROLLBACK_COMPLETE",
        "IMPORT_ROLLBACK_FAILED",
    }
)


@attrs.frozen
class StackSpec:
    """What a stack should be: its template and parameter values."""

    name: str
    template_body: str
    parameters: Mapping[str, str]
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Change:
    """One line of a change set: Add, Modify or Remove a resource."""

    action: str
    logical_id: str
    resource_type: str
    replacement: str = ""

    def __str__(self) -> str:
        replace = f"  (replacement: {self.replacement})" if self.replacement else ""
        return f"{self.action:<7} {self.logical_id:<28} {self.resource_type}{replace}"


@attrs.frozen
class Result:
    """How a deployment of one stack ended, and the stack's outputs afterwards."""

    action: str  # "created", "updated" or "unchanged"
    outputs: dict[str, str]


class Stacks:
    """Deploys and deletes stacks with one CloudFormation client."""

    def __init__(
        self,
        cloudformation: Any,
        echo: Echo,
        *,
        poll_interval: float = 5.0,
        timeout: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cfn = cloudformation
        self._echo = echo
        self._poll = poll_interval
        self._timeout = timeout
        self._sleep = sleep

    # -- reading ------------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any] | None:
        """The stack, or None if there is none by that name (deleted stacks do not count)."""
        from botocore.exceptions import ClientError

        try:
            stacks = self._cfn.describe_stacks(StackName=name)["Stacks"]
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
                return None
            raise DeployError(f"DescribeStacks {name}: {exc}") from None
        stack: dict[str, Any] = stacks[0]
        return None if stack["StackStatus"] == "DELETE_COMPLETE" else stack

    def outputs(self, name: str) -> dict[str, str]:
        stack = self.describe(name)
        if stack is None:
            raise DeployError(f"stack {name} does not exist")
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}

    def parameters(self, name: str) -> dict[str, str]:
        """The stack's current parameter values (to keep what the user does not change)."""
        stack = self.describe(name)
        if stack is None:
            return {}
        return {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters") or []}

    # -- deploying ----------------------------------------------------------------------------

    def deploy(self, spec: StackSpec, confirm: Confirm) -> Result:
        """Create or update `spec.name` through a change set that `confirm` approves."""
        stack = self.describe(spec.name)
        status = stack["StackStatus"] if stack else None
        if status == "ROLLBACK_COMPLETE":
            # A first creation that failed: nothing in it can be updated, only deleted.
            self._echo(f"{spec.name}: the last creation failed (ROLLBACK_COMPLETE); deleting it")
            self.delete(spec.name)
            status = None
        elif status not in (None, "REVIEW_IN_PROGRESS") and status.endswith("_IN_PROGRESS"):
            raise DeployError(
                f"stack {spec.name} is busy ({status}); wait until it settles and run again"
            )
        creating = status is None or status == "REVIEW_IN_PROGRESS"
        change_set_type = "CREATE" if creating else "UPDATE"

        started = time.time()
        seen = self._event_ids(spec.name) if not creating else set()
        with aws_errors(f"CreateChangeSet for {spec.name}"):
            created = self._cfn.create_change_set(
                StackName=spec.name,
                ChangeSetName=f"fluidity-{uuid.uuid4().hex[:12]}",
                ChangeSetType=change_set_type,
                TemplateBody=spec.template_body,
                Parameters=[
                    {"ParameterKey": k, "ParameterValue": v} for k, v in spec.parameters.items()
                ],
                Capabilities=["CAPABILITY_IAM"],
                Tags=[{"Key": k, "Value": v} for k, v in spec.tags.items()],
            )
        change_set_id = created["Id"]
        described = self._wait_change_set(spec.name, change_set_id)
        if described["Status"] == "FAILED":
            reason = described.get("StatusReason") or "no reason given"
            self._delete_change_set(spec.name, change_set_id)
            if any(text in reason for text in _NO_CHANGES):
                self._echo(f"{spec.name}: no changes")
                return Result("unchanged", self.outputs(spec.name))
            raise DeployError(f"the change set for {spec.name} failed: {reason}")

        changes = [_change(c) for c in described.get("Changes", [])]
        self._echo(f"\n{spec.name}: {change_set_type.lower()}, {len(changes)} change(s)")
        for change in changes:
            self._echo(f"  {change}")
        if not confirm(spec.name, changes):
            self._delete_change_set(spec.name, change_set_id)
            if creating:
                # The empty stack (REVIEW_IN_PROGRESS) a CREATE change set leaves behind.
                with aws_errors(f"DeleteStack {spec.name}"):
                    self._cfn.delete_stack(StackName=spec.name)
            raise Aborted(f"{spec.name}: changes not applied")

        with aws_errors(f"ExecuteChangeSet for {spec.name}"):
            self._cfn.execute_change_set(ChangeSetName=change_set_id, StackName=spec.name)
        final = self._follow(spec.name, seen, started)
        if final in _FAILED_STATES or not final.endswith("_COMPLETE"):
            raise StackFailed(
                f"{spec.name}: {change_set_type.lower()} failed ({final})",
                self.failure_events(spec.name, started),
            )
        return Result("created" if creating else "updated", self.outputs(spec.name))

    def delete(self, name: str) -> bool:
        """Delete the stack and wait until it is gone; False if there was none."""
        stack = self.describe(name)
        if stack is None:
            return False
        stack_id = stack["StackId"]
        started = time.time()
        seen = self._event_ids(name)
        with aws_errors(f"DeleteStack {name}"):
            self._cfn.delete_stack(StackName=name)
        final = self._follow(stack_id, seen, started, label=name)
        if final != "DELETE_COMPLETE":
            raise StackFailed(
                f"{name}: delete failed ({final})", self.failure_events(stack_id, started)
            )
        return True

    def failure_events(self, name: str, since: float) -> list[str]:
        """The stack's events since `since` that failed with a reason, oldest first."""
        events = [
            e
            for e in self._events(name)
            if "FAILED" in e.get("ResourceStatus", "")
            and e.get("ResourceStatusReason")
            and _epoch(e.get("Timestamp")) >= since - 60
        ]
        return [_event_line(e) for e in reversed(events)]

    # -- internals ----------------------------------------------------------------------------

    def _events(self, name: str) -> list[dict[str, Any]]:
        """The stack's events, newest first ([] once the stack is gone)."""
        from botocore.exceptions import ClientError

        try:
            pages = self._cfn.get_paginator("describe_stack_events").paginate(StackName=name)
            events: list[dict[str, Any]] = []
            for page in pages:
                events.extend(page.get("StackEvents", []))
                if len(events) >= 500:
                    break
            return events
        except ClientError:
            return []

    def _event_ids(self, name: str) -> set[str]:
        return {e["EventId"] for e in self._events(name)}

    def _wait_change_set(self, name: str, change_set_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self._timeout
        while True:
            with aws_errors(f"DescribeChangeSet for {name}"):
                described: dict[str, Any] = self._cfn.describe_change_set(
                    ChangeSetName=change_set_id, StackName=name
                )
            if described["Status"] in ("CREATE_COMPLETE", "FAILED"):
                # Every page of changes, not only the first.
                token = described.get("NextToken")
                while token:
                    with aws_errors(f"DescribeChangeSet for {name}"):
                        more = self._cfn.describe_change_set(
                            ChangeSetName=change_set_id, StackName=name, NextToken=token
                        )
                    described.setdefault("Changes", []).extend(more.get("Changes", []))
                    token = more.get("NextToken")
                return described
            if time.monotonic() > deadline:
                raise DeployError(f"the change set for {name} took too long to compute")
            self._sleep(self._poll)

    def _delete_change_set(self, name: str, change_set_id: str) -> None:
        from botocore.exceptions import ClientError

        # Only tidiness: an unexecuted change set costs nothing.
        with contextlib.suppress(ClientError):
            self._cfn.delete_change_set(ChangeSetName=change_set_id, StackName=name)

    def _follow(self, name: str, seen: set[str], started: float, *, label: str = "") -> str:
        """Print new events until the stack settles; its final status (DELETE_COMPLETE when
        it is gone)."""
        label = label or name
        deadline = time.monotonic() + self._timeout
        while True:
            for event in reversed(self._events(name)):
                if event["EventId"] not in seen:
                    seen.add(event["EventId"])
                    self._echo(f"  {_event_line(event)}")
            stack = self.describe(name)
            if stack is None:
                return "DELETE_COMPLETE"
            status: str = stack["StackStatus"]
            if not status.endswith("_IN_PROGRESS"):
                return status
            if time.monotonic() > deadline:
                raise StackFailed(
                    f"{label}: still {status} after {self._timeout:.0f} s; see the console",
                    self.failure_events(name, started),
                )
            self._sleep(self._poll)


def _change(raw: Mapping[str, Any]) -> Change:
    resource = raw.get("ResourceChange", {})
    return Change(
        action=str(resource.get("Action", "?")),
        logical_id=str(resource.get("LogicalResourceId", "?")),
        resource_type=str(resource.get("ResourceType", "?")),
        replacement=str(resource.get("Replacement") or "")
        if resource.get("Action") == "Modify"
        else "",
    )


def _epoch(value: object) -> float:
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else 0.0


def _event_line(event: Mapping[str, Any]) -> str:
    stamp = event.get("Timestamp")
    when = stamp.strftime("%H:%M:%S") if isinstance(stamp, dt.datetime) else "--:--:--"
    reason = event.get("ResourceStatusReason")
    line = (
        f"{when}  {event.get('ResourceStatus', '?'):<20} {event.get('LogicalResourceId', '?')}"
        f" ({event.get('ResourceType', '?')})"
    )
    return f"{line}: {reason}" if reason else line
