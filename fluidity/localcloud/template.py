"""Read what the local cloud needs from the CloudFormation templates in cfn/.

A YAML loader that keeps CloudFormation's short-form tags (`!Ref`, `!GetAtt`, `!Sub`, ...)
as small objects, and helpers that resolve a `!Ref` to a parameter's default.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable
from typing import Any

import attrs
import yaml


@attrs.frozen
class Tag:
    """A CloudFormation intrinsic in short form: `!Ref X` is Tag("Ref", "X")."""

    name: str
    value: Any


class _Loader(yaml.SafeLoader):
    pass


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tag:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return Tag(suffix, value)


_Loader.add_multi_constructor("!", _construct)


def load_template(path: Traversable) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = yaml.load(f, Loader=_Loader)  # a SafeLoader subclass
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a CloudFormation template")
    return data


def resolve(template: dict[str, Any], value: Any) -> Any:
    """A literal, or the default of the parameter a `!Ref` names."""
    if isinstance(value, Tag) and value.name == "Ref":
        parameter = template.get("Parameters", {}).get(value.value)
        if parameter is None or "Default" not in parameter:
            raise ValueError(f"!Ref {value.value} has no parameter default to use locally")
        return parameter["Default"]
    return value


@attrs.frozen
class ScheduleSpec:
    """One EventBridge schedule: its expression and the handler module it invokes."""

    name: str
    expression: str
    handler: str


def schedules(template: dict[str, Any]) -> list[ScheduleSpec]:
    """The AWS::Scheduler::Schedule resources: expression and target function's handler."""
    resources: dict[str, Any] = template.get("Resources", {})
    found = []
    for name, resource in resources.items():
        if resource.get("Type") != "AWS::Scheduler::Schedule":
            continue
        props = resource["Properties"]
        expression = str(resolve(template, props["ScheduleExpression"]))
        target = props["Target"]["Arn"]
        if not (isinstance(target, Tag) and target.name == "GetAtt"):
            raise ValueError(f"{name}: the target is not !GetAtt <Function>.Arn")
        function = target.value if isinstance(target.value, str) else ".".join(target.value)
        logical = function.split(".")[0]
        handler = str(resources[logical]["Properties"]["Handler"])
        # "fluidity_lambda.sleep.handler" -> "sleep"
        found.append(ScheduleSpec(name, expression, handler.split(".")[-2]))
    return found


def parameter_default(template: dict[str, Any], name: str) -> Any:
    return template["Parameters"][name]["Default"]
