"""Wake (POST /wake): make sure the server is, or is becoming, up.

Only ever sets the desired count from 0 to 1, never adds to it, so concurrent or repeated
calls are harmless: two callers that both see 0 both set 1. Every call, even on a running
server, records the wake time on the service (a tag), which gives the caller Sleep's grace
period to connect before an idle server is stopped under it.
"""

from __future__ import annotations

from typing import Any, Literal

from . import common

WakeAction = Literal["waking", "starting", "already_running"]


class WakeBody(common.StatusBody):
    action: WakeAction


def wake() -> WakeBody:
    """Set desired count 1 if it is 0; say what was done and the state afterwards."""
    cfg = common.config()
    service = common.describe_service(cfg)
    tasks = common.list_tasks(cfg)
    # Before scaling: Sleep must never see the new desired count without the new wake time.
    common.record_wake(str(service["serviceArn"]), common.now())
    woke = int(service.get("desiredCount", 0)) == 0
    if woke:
        service = common.update_desired_count(cfg, 1)
    current = common.service_state(service, tasks)
    action: WakeAction = "waking" if woke else "starting"
    if not woke and current.state == "running":
        action = "already_running"
    return WakeBody(action=action, **current.status)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point."""
    return common.serve("wake", event, wake)
