"""Connections that have not finished their TLS handshake: few, and the stalled ones go first.

Until the handshake completes nobody is authenticated, so anyone who can reach the port can
open connections and send nothing; each would hold a task, a socket and (once TLS starts) an
SSL object for `handshake_timeout`. `max_links` counts only finished handshakes, so these
are bounded here: at most `max_total` at once, and `max_per_source` from one address (one /64
for IPv6, which an attacker gets whole).

At a cap, the oldest pending connection that has sent nothing yet is closed to make room (the
oldest at all if every one is talking TLS); the new one is always admitted. Refusing the new
one instead would let a flood that holds the slots starve a real agent for as long as it
lasts; evicting the stalled ones means an agent, which sends its ClientHello at once, only
loses if the cap's worth of connections arrive during its own handshake. Pending connections
get no SSL object before their first byte arrives, so a stalled one costs little while it
waits to be shed.
"""

from __future__ import annotations

import ipaddress
import logging
import math

import attrs
import trio

log = logging.getLogger(__name__)

#: Seconds between the warnings that say connections are being shed (one per burst).
SHED_LOG_INTERVAL = 60.0


def source_of(address: str) -> str:
    """The key a connection counts against: its IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@attrs.define(eq=False)
class Pending:
    """One connection waiting for its handshake; run the handshake inside `scope`."""

    source: str
    scope: trio.CancelScope
    #: Bytes arrived: a TLS handshake is under way (a stalled connection has sent nothing).
    talking: bool = False
    #: Closed to make room for a newer connection (its scope was cancelled).
    shed: bool = False


class PendingHandshakes:
    """The pending connections, oldest first, overall and per source."""

    def __init__(self, max_total: int, max_per_source: int) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self._all: dict[Pending, None] = {}
        self._by_source: dict[str, dict[Pending, None]] = {}
        #: Connections shed since the last warning about it.
        self._shed = 0
        self._shed_logged_at = -math.inf

    def __len__(self) -> int:
        return len(self._all)

    def admit(self, source: str, deadline: float) -> Pending:
        """A new pending connection (its scope ends at `deadline`), shedding others if full."""
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.max_per_source:
            self._shed_one(mine, f"max_handshakes_per_source={self.max_per_source}")
        if len(self._all) >= self.max_total:
            self._shed_one(self._all, f"max_handshakes={self.max_total}")
        pending = Pending(source, trio.CancelScope(deadline=deadline))
        self._all[pending] = None
        self._by_source.setdefault(source, {})[pending] = None
        return pending

    def done(self, pending: Pending) -> None:
        """The handshake finished, failed or was shed: forget it (twice is fine)."""
        if pending in self._all:
            del self._all[pending]
            mine = self._by_source[pending.source]
            del mine[pending]
            if not mine:
                del self._by_source[pending.source]

    def _shed_one(self, among: dict[Pending, None], cap: str) -> None:
        victim = next((p for p in among if not p.talking), None) or next(iter(among))
        victim.shed = True
        victim.scope.cancel()
        self.done(victim)
        self._shed += 1
        now = trio.current_time()
        if now - self._shed_logged_at >= SHED_LOG_INTERVAL:
            log.warning(
                "pending TLS handshakes at the cap (%s): closing the oldest silent ones "
                "(%d since the last warning); raise it if real agents are turned away",
                cap,
                self._shed,
            )
            self._shed = 0
            self._shed_logged_at = now
