"""The Fargate stand-in: watches the service's desiredCount and runs real server processes.

desiredCount 1 with no task: after `start_delay` (a cold start), start
`python -m fluidity.server`, report the task PROVISIONING then RUNNING in ECS.
desiredCount 0 with a task: SIGTERM (the server drains), SIGKILL after `stop_timeout`,
report the task STOPPED. A server that dies on its own is replaced, as ECS would.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import attrs
import trio

from fluidity.processes import stop_process
from fluidity.readyfile import wait_ready_file

from .aws import LocalAws

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
READY_TIMEOUT = 30.0


@attrs.define
class Task:
    arn: str
    process: trio.Process | None = None
    status: str = "PROVISIONING"

    @property
    def stopping(self) -> bool:
        """Being stopped, or stopped and still being reported to ECS: not to stop again."""
        return self.status in {"STOPPING", "STOPPED"}


@attrs.define
class FargateStandIn:
    aws: LocalAws
    #: `python -m fluidity.server` arguments, without --ready-file (added per task).
    server_args: list[str]
    workdir: Path
    env: Mapping[str, str] = attrs.field(factory=dict)
    start_delay: float = 2.0
    stop_timeout: float = 30.0
    task: Task | None = None
    #: Counters for people and tests.
    starts: int = 0
    stops: int = 0
    _nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile until cancelled; stops a running server on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    desired = await trio.to_thread.run_sync(self.aws.desired_count)
                    if desired > 0 and self.task is None:
                        self.task = Task(await trio.to_thread.run_sync(self.aws.start_task))
                        nursery.start_soon(self._launch, self.task)
                    elif desired == 0 and self.task is not None and not self.task.stopping:
                        self.task.status = "STOPPING"
                        nursery.start_soon(self._stop, self.task)
                    await trio.sleep(POLL_INTERVAL)
        finally:
            if self.task is not None and self.task.process is not None:
                self.task.status = "STOPPING"  # the cloud is going away: not a crash
                with trio.CancelScope(shield=True):
                    await self._terminate(self.task.process)

    async def _launch(self, task: Task) -> None:
        log.info("fargate: task PROVISIONING (cold start %.1f s)", self.start_delay)
        await trio.sleep(self.start_delay)
        if task.status != "PROVISIONING":
            return  # scaled in while starting
        self.starts += 1
        ready = self.workdir / f"server-{self.starts}.json"
        log_path = self.workdir / f"server-{self.starts}.log"
        with open(log_path, "ab") as output:  # noqa: ASYNC230 - a local file, opened once
            task.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "fluidity.server", *self.server_args,
                 "--ready-file", str(ready)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**_base_env(), **self.env},
                start_new_session=True,  # a Ctrl-C meant for the cloud is not ECS stopping it
            )  # fmt: skip
        info = None
        with trio.move_on_after(READY_TIMEOUT):
            info = await wait_ready_file(ready, task.process)
        if info is None:
            log.error("fargate: the server failed to start; see %s", log_path)
            await self._stopped(task)
            return
        task.status = "RUNNING"
        await trio.to_thread.run_sync(self.aws.set_task_status, task.arn, "RUNNING")
        log.info("fargate: task RUNNING (server pid %s, port %s)", info["pid"], info["listen_port"])
        await task.process.wait()
        if task.status == "RUNNING":
            log.warning("fargate: the server exited (code %s); ECS will replace it",
                        task.process.returncode)  # fmt: skip
            await self._stopped(task)

    async def _stop(self, task: Task) -> None:
        log.info("fargate: desiredCount is 0: stopping the task")
        if task.process is not None:
            await self._terminate(task.process)
        await self._stopped(task)

    async def _terminate(self, process: trio.Process) -> None:
        code = await stop_process(process, self.stop_timeout)
        if code == -signal.SIGKILL:
            log.warning("fargate: the server did not stop in %.0f s: killed", self.stop_timeout)

    async def _stopped(self, task: Task) -> None:
        if task.status == "STOPPED":
            return  # a stop and a failed start can both end here: report it once
        task.status = "STOPPED"
        self.stops += 1
        await trio.to_thread.run_sync(self.aws.stop_task, task.arn)
        if self.task is task:
            self.task = None
        log.info("fargate: task STOPPED")


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FLUIDITY_")}
