"""Kill (POST /kill, and a daily schedule): stop the server now, whatever it is doing.

No activity check: the caller (an agent exiting, the nightly schedule) has decided. A service
already at desired count 0 is left alone and reported as such.
"""

from __future__ import annotations

from typing import Any, Literal

from . import common

KillAction = Literal["killed", "already_stopped"]


class KillBody(common.StatusBody):
    action: KillAction


def kill() -> KillBody:
    """Set desired count 0 unless it already is; say which, and the state afterwards."""
    cfg = common.config()
    service = common.describe_service(cfg)
    tasks = common.list_tasks(cfg)
    action: KillAction = "already_stopped"
    if int(service.get("desiredCount", 0)) > 0:
        service = common.update_desired_count(cfg, 0)
        action = "killed"
    # Desired count 0 is never "running", so there is no address to look up.
    current = common.service_state(service, tasks, resolve_address=False)
    return KillBody(action=action, **current.status)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point."""
    return common.serve("kill", event, kill)
