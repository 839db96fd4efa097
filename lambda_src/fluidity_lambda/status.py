"""Status (GET /status): the server's state and, once it runs, the address to connect to.

Read-only; the agent polls it after a wake until the state is "running" with an address.
"""

from __future__ import annotations

from typing import Any

from . import common


def status() -> common.StatusBody:
    """The service's state now."""
    return common.current_state(common.config()).status


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point."""
    return common.serve("status", event, status)
