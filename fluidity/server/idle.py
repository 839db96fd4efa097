"""Idle limits for relays that may live indefinitely: CONNECT tunnels and WebSockets.

An open relay counts as activity (ActiveConnections), so one that never ends keeps the server
from sleeping: a client gone quiet with its tunnel open, an origin that never answers the
client's EOF. So a relay in which nothing moves either way for `tunnel_idle_timeout` seconds is
ended, and one with a direction already complete gets only `half_closed_timeout` (HAProxy's
`timeout tunnel` and `timeout client-fin` / `server-fin`). Request streams need no such limit:
the origin's side is bounded by `upstream_read_timeout`, the client's by the agent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

#: Seconds a relay may move nothing either way (the server's tunnel_idle_timeout).
DEFAULT_IDLE_TIMEOUT = 300.0
#: Seconds a relay with one direction complete may move nothing (half_closed_timeout).
DEFAULT_HALF_CLOSED_TIMEOUT = 30.0


class IdleTimer:
    """When a two-way relay has been idle too long.

    The relay calls `moved()` per chunk or message and `ended()` as each direction completes.
    A relay that only needs to stop runs inside `enforced()`, a cancel scope whose deadline
    moves with the bytes (no task of its own: a thousand tunnels kept a thousand tasks
    waiting); one that must act first (close a WebSocket) waits in `wait_idle()` in a task of
    its own, which sleeps until the deadline that could pass.
    """

    __slots__ = ("_lot", "_scope", "_slack", "expired", "half_closed", "idle", "last", "limit",
                 "open_directions")  # fmt: skip

    def __init__(self, idle: float, half_closed: float) -> None:
        self.idle = idle
        self.half_closed = half_closed
        self.last = trio.current_time()
        self.open_directions = 2
        #: The limit that applies now: `idle`, `half_closed` once a direction ended.
        self.limit = idle
        #: Why the relay is idle (naming the setting), once it is.
        self.expired: str | None = None
        self._lot: trio.lowlevel.ParkingLot | None = None
        self._scope: trio.CancelScope | None = None
        self._slack = min(1.0, idle / 100)

    def moved(self) -> None:
        now = self.last = trio.current_time()
        scope = self._scope
        if scope is not None and now + self.limit > scope.deadline:
            # A little further than needed: a busy relay moves it once per slack, not per
            # chunk (and never ends before the limit).
            scope.deadline = now + self.limit + self._slack

    def ended(self) -> None:
        """One direction is complete: the other one now has `half_closed` seconds."""
        self.open_directions -= 1
        self.last = trio.current_time()
        self.limit = self.half_closed if self.open_directions > 0 else math.inf
        self._slack = min(1.0, self.limit / 100)
        if self._lot is not None:
            self._lot.unpark_all()
        if self._scope is not None:
            self._scope.deadline = self.last + self.limit

    def _expire(self) -> str:
        setting = "tunnel_idle_timeout" if self.open_directions == 2 else "half_closed_timeout"
        self.expired = f"nothing moved for {self.limit:g} s ({setting})"
        return self.expired

    @contextmanager
    def enforced(self) -> Iterator[None]:
        """Run the relay in this block: it is cancelled once a limit passes (`expired` then
        says which), at the limit or up to a hundredth of it (at most a second) later."""
        with trio.CancelScope(deadline=self.last + self.limit) as scope:
            self._scope = scope
            try:
                yield
            finally:
                self._scope = None
        if scope.cancelled_caught:  # nothing else cancels this scope: its deadline passed
            self._expire()

    async def wait_idle(self) -> str | None:
        """Return why once a limit passes (also in `expired`); None once both directions
        ended first."""
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        while self.open_directions > 0:
            deadline = self.last + self.limit
            if trio.current_time() >= deadline:
                return self._expire()
            with trio.move_on_at(deadline):
                await self._lot.park()
        return None
