"""Idle limits for relays that may live indefinitely: CONNECT tunnels and WebSockets.

An open relay counts as activity (ActiveConnections), so one that never ends keeps the server
from sleeping: a client gone quiet with its tunnel open, an origin that never answers the
client's EOF. So a relay in which nothing moves either way for `tunnel_idle_timeout` seconds is
ended, and one with a direction already complete gets only `half_closed_timeout` (HAProxy's
`timeout tunnel` and `timeout client-fin` / `server-fin`). Request streams need no such limit:
the origin's side is bounded by `upstream_read_timeout`, the client's by the agent.
"""

from __future__ import annotations

import trio

#: Seconds a relay may move nothing either way (the server's tunnel_idle_timeout).
DEFAULT_IDLE_TIMEOUT = 300.0
#: Seconds a relay with one direction complete may move nothing (half_closed_timeout).
DEFAULT_HALF_CLOSED_TIMEOUT = 30.0


class IdleTimer:
    """When a two-way relay has been idle too long.

    The relay calls `moved()` per chunk or message (one clock read) and `ended()` as each
    direction completes; one task in the relay's nursery waits in `wait_idle()`, which sleeps
    until the deadline that could pass, then checks it.
    """

    __slots__ = ("_lot", "expired", "half_closed", "idle", "last", "open_directions")

    def __init__(self, idle: float, half_closed: float) -> None:
        self.idle = idle
        self.half_closed = half_closed
        self.last = trio.current_time()
        self.open_directions = 2
        #: Why the relay is idle (naming the setting), once it is.
        self.expired: str | None = None
        self._lot = trio.lowlevel.ParkingLot()

    def moved(self) -> None:
        self.last = trio.current_time()

    def ended(self) -> None:
        """One direction is complete: the other one now has `half_closed` seconds."""
        self.open_directions -= 1
        self.last = trio.current_time()
        self._lot.unpark_all()

    async def wait_idle(self) -> str | None:
        """Return why once a limit passes (also in `expired`); None once both directions
        ended first."""
        while self.open_directions > 0:
            if self.open_directions == 2:
                limit, setting = self.idle, "tunnel_idle_timeout"
            else:
                limit, setting = self.half_closed, "half_closed_timeout"
            deadline = self.last + limit
            if trio.current_time() >= deadline:
                self.expired = f"nothing moved for {limit:g} s ({setting})"
                return self.expired
            with trio.move_on_at(deadline):
                await self._lot.park()
        return None

    async def cancel_when_idle(self, relay: trio.CancelScope) -> None:
        if await self.wait_idle() is not None:
            relay.cancel()
