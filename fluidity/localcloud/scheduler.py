"""The EventBridge Scheduler stand-in: fires the schedules of cfn/lambda.yaml, time-scaled.

With `time_scale` 60 a minute of schedule time passes in a second: `rate(5 minutes)` fires
every 5 s and the daily `cron(0 23 * * ? *)` every 24 minutes. Each firing invokes the
handler the schedule targets with an EventBridge Scheduler-shaped event.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import trio

from fluidity.deploy.schedule import Rate, parse_schedule

from .template import ScheduleSpec

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]


@attrs.define
class Firing:
    schedule: str
    at: float
    result: Any


@attrs.define
class SchedulerStandIn:
    schedules: list[ScheduleSpec]
    handlers: dict[str, Handler]
    time_scale: float = 1.0
    firings: list[Firing] = attrs.field(factory=list)
    _start_real: float = 0.0
    _start_cloud: dt.datetime = attrs.field(factory=lambda: dt.datetime.now(dt.UTC))
    _fired: trio.Event = attrs.field(factory=trio.Event)

    def cloud_now(self) -> dt.datetime:
        """Schedule time: real time since start, multiplied by the time scale."""
        elapsed = (trio.current_time() - self._start_real) * self.time_scale
        return self._start_cloud + dt.timedelta(seconds=elapsed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._start_real = trio.current_time()
        self._start_cloud = dt.datetime.now(dt.UTC)
        async with trio.open_nursery() as nursery:
            for spec in self.schedules:
                nursery.start_soon(self._loop, spec)
            task_status.started()

    async def _loop(self, spec: ScheduleSpec) -> None:
        schedule = parse_schedule(spec.expression)
        while True:
            now = self.cloud_now()
            if isinstance(schedule, Rate):
                fire_at: dt.datetime | None = schedule.next_after(now, self._start_cloud)
            else:
                fire_at = schedule.next_after(now)
            if fire_at is None:
                return
            await trio.sleep((fire_at - now).total_seconds() / self.time_scale)
            await self.fire(spec.name)

    async def fire(self, name: str) -> Any:
        """Invoke the schedule's target now, as the scheduler would; returns its result."""
        spec = next(s for s in self.schedules if s.name == name)
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.scheduler",
            "time": self.cloud_now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "resources": [f"arn:aws:scheduler:local:schedule/default/{spec.name}"],
            "detail": {},
        }
        try:
            result = await trio.to_thread.run_sync(self.handlers[spec.handler], event, None)
        except Exception as exc:
            log.exception("schedule %s: %s failed", spec.name, spec.handler)
            result = {"action": "error", "reason": str(exc)}
        self.firings.append(Firing(spec.name, trio.current_time(), result))
        summary = result.get("action") if isinstance(result, dict) else result
        reason = result.get("reason", "") if isinstance(result, dict) else ""
        log.info("schedule %s -> %s: %s %s", spec.name, spec.handler, summary, reason)
        self._fired.set()
        self._fired = trio.Event()
        return result

    async def wait_firing(self) -> Firing:
        """Wait for the next firing of any schedule."""
        await self._fired.wait()
        return self.firings[-1]
