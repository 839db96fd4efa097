"""`moto_server` with two gaps filled, run as a subprocess by the deploy tests.

    python -m tests.deploy.moto_shim --port 5000

moto 5.2 leaves both of these out, and the deploy tool needs them:

1. A stack made or updated by executing a change set keeps the outputs of the template it
   had before (none for a new stack): moto builds the outputs only in CreateStack and
   UpdateStack. Real CloudFormation recomputes them after every execution.
2. `AWS::ApiGateway::ApiKey` is skipped in templates, so its `Ref` is no key id at all. Here it
   becomes a real key in moto's API Gateway (the key `fluidity deploy` reads the value of).
3. Deleting a stack leaves its internet gateway attached and its route table in place (moto
   deletes neither), so the VPC cannot go and DeleteStack fails. Here they are deleted as
   CloudFormation deletes them.

Everything else stays as moto models it; usage plans, stages, schedules and Fargate settings
are checked on the templates themselves (tests/deploy/test_templates.py).
"""

from __future__ import annotations

import sys
from typing import Any

from moto.apigateway.models import apigateway_backends
from moto.cloudformation import models as cfn_models
from moto.core.common_models import CloudFormationModel
from moto.ec2.models import ec2_backends
from moto.ec2.models.internet_gateways import InternetGateway
from moto.ec2.models.route_tables import RouteTable
from moto.ec2.models.vpn_gateway import VPCGatewayAttachment


class ApiKeyResource(CloudFormationModel):  # type: ignore[misc]
    """AWS::ApiGateway::ApiKey backed by moto's API Gateway; Ref is the key id."""

    # moto's model metaclass reads the service from the module path.
    __module__ = "moto.apigateway.models"

    def __init__(self, account_id: str, region_name: str, key_id: str) -> None:
        self.account_id = account_id
        self.region_name = region_name
        self.key_id = key_id

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ApiGateway::ApiKey"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "APIKeyId"

    @property
    def physical_resource_id(self) -> str:
        return self.key_id

    def get_cfn_attribute(self, attribute_name: str) -> str:
        return self.key_id

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> ApiKeyResource:
        properties = cloudformation_json.get("Properties", {})
        key = apigateway_backends[account_id][region_name].create_api_key(
            {
                "name": properties.get("Name", resource_name),
                "description": properties.get("Description"),
                "enabled": str(properties.get("Enabled", False)).lower() == "true",
            }
        )
        return cls(account_id, region_name, key.id)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls,
        original_resource: ApiKeyResource,
        new_resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> ApiKeyResource:
        return original_resource

    def delete(self, account_id: str, region_name: str) -> None:
        apigateway_backends[account_id][region_name].delete_api_key(self.key_id)

    def is_created(self) -> bool:
        return True


_execute_change_set = cfn_models.CloudFormationBackend.execute_change_set


def _execute_and_refresh_outputs(
    self: cfn_models.CloudFormationBackend, change_set_name: str, stack_name: str | None = None
) -> None:
    _execute_change_set(self, change_set_name, stack_name)
    for stack in self.stacks.values():
        if stack.template:
            stack._parse_template()
            stack.output_map = stack._create_output_map()


def _detach(self: VPCGatewayAttachment, account_id: str, region_name: str) -> None:
    if self.gateway_id:
        ec2_backends[account_id][region_name].detach_internet_gateway(self.gateway_id, self.vpc_id)


def _delete_gateway(self: InternetGateway, account_id: str, region_name: str) -> None:
    ec2_backends[account_id][region_name].delete_internet_gateway(self.id)


def _delete_route_table(self: RouteTable, account_id: str, region_name: str) -> None:
    backend = ec2_backends[account_id][region_name]
    for association_id in list(self._associations):
        backend.disassociate_route_table(association_id)
    backend.delete_route_table(self.id)


def main(argv: list[str]) -> None:
    cfn_models.CloudFormationBackend.execute_change_set = _execute_and_refresh_outputs  # type: ignore[method-assign]
    VPCGatewayAttachment.delete = _detach  # type: ignore[attr-defined]
    InternetGateway.delete = _delete_gateway  # type: ignore[attr-defined]
    RouteTable.delete = _delete_route_table  # type: ignore[attr-defined]
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
