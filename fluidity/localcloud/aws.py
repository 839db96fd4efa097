"""The AWS APIs of the local cloud: moto's server on loopback, and the resources cfn/ makes.

moto runs in this process (its threaded server) so that the Fargate stand-in can mark tasks
RUNNING and attach their network interface, which moto's ECS cannot do by itself; every other
process (the servers' metrics, the tests) reaches it over HTTP on loopback like real AWS.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import attrs

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
#: The address every local task gets: its servers listen on loopback.
TASK_ADDRESS = "127.0.0.1"

#: Credentials moto accepts; nothing here can reach real AWS.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local-cloud",
    "AWS_SECRET_ACCESS_KEY": "local-cloud",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}


@attrs.define
class LocalAws:
    """moto's server on 127.0.0.1 and the cluster, task definition and service in it."""

    cluster: str = "fluidity"
    service: str = "fluidity-server"
    endpoint: str = ""
    _server: Any = None
    eni_id: str = ""
    subnet_id: str = ""

    @property
    def env(self) -> dict[str, str]:
        """Environment for processes (and boto3 here) that must use this "AWS"."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def start(self, port: int = 0) -> str:
        """Start moto on loopback `port` (0: a free one); returns its endpoint URL."""
        from moto.moto_api import state_manager
        from moto.moto_api._internal.models import moto_api_backend
        from moto.server import ThreadedMotoServer

        os.environ.update(FAKE_CREDENTIALS)  # read by moto itself when it starts
        # moto's backends are global to the process: without this, a second local cloud in
        # the same process (tests) would see the first one's tasks, tags and metrics.
        moto_api_backend.reset()
        # moto walks tasks from RUNNING to STOPPED as they are described; here only the
        # Fargate stand-in moves them, as the real processes start and stop.
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**12})
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        port = self._server._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(self.env)
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, service: str) -> Any:
        import boto3

        return boto3.session.Session().client(
            service, region_name=REGION, endpoint_url=self.endpoint
        )

    def provision(self) -> None:
        """What cfn/fargate.yaml creates, as far as the control plane sees it."""
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
        self.subnet_id = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"][
            "SubnetId"
        ]
        interface = ec2.create_network_interface(
            SubnetId=self.subnet_id, PrivateIpAddress=TASK_ADDRESS
        )
        self.eni_id = interface["NetworkInterface"]["NetworkInterfaceId"]
        ecs = self.client("ecs")
        ecs.create_cluster(clusterName=self.cluster)
        # Not awsvpc: moto cannot create awsvpc tasks; the stand-in attaches the ENI itself.
        ecs.register_task_definition(
            family=self.service,
            containerDefinitions=[{"name": "server", "image": "fluidity-server", "memory": 512}],
        )
        ecs.create_service(
            cluster=self.cluster,
            serviceName=self.service,
            taskDefinition=self.service,
            desiredCount=0,
            launchType="FARGATE",
        )

    # -- what ECS would do by itself (moto's models, in this process) -------------------------

    def _backend(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][REGION]

    def desired_count(self) -> int:
        service = self.client("ecs").describe_services(
            cluster=self.cluster, services=[self.service]
        )
        return int(service["services"][0]["desiredCount"])

    def start_task(self) -> str:
        """Register a PROVISIONING task of the service, attached to the loopback ENI."""
        arn: str = self.client("ecs").run_task(
            cluster=self.cluster,
            taskDefinition=self.service,
            launchType="FARGATE",
            group=f"service:{self.service}",
            startedBy="ecs-svc/local-cloud",
        )["tasks"][0]["taskArn"]
        task = self._backend().tasks[self.cluster][arn]
        task.last_status = "PROVISIONING"
        task.created_at = dt.datetime.now(dt.UTC)
        task.attachments = [
            {
                "id": "local-eni",
                "type": "ElasticNetworkInterface",
                "status": "ATTACHED",
                "details": [
                    {"name": "subnetId", "value": self.subnet_id},
                    {"name": "networkInterfaceId", "value": self.eni_id},
                    {"name": "privateIPv4Address", "value": TASK_ADDRESS},
                ],
            }
        ]
        self.set_counts(running=0, pending=1)
        return arn

    def set_task_status(self, arn: str, status: str) -> None:
        task = self._backend().tasks[self.cluster][arn]
        task.last_status = status
        if status == "RUNNING":
            task.started_at = dt.datetime.now(dt.UTC)
            self.set_counts(running=1, pending=0)

    def stop_task(self, arn: str) -> None:
        self.client("ecs").stop_task(cluster=self.cluster, task=arn, reason="scaled in")
        self._backend().tasks[self.cluster][arn].last_status = "STOPPED"
        self.set_counts(running=0, pending=0)

    def set_counts(self, *, running: int, pending: int) -> None:
        service = self._backend().services[f"{self.cluster}:{self.service}"]
        service.running_count = running
        service.pending_count = pending
