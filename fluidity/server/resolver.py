"""A static hostname table for trio's resolver: fixed answers, and no DNS unless asked for.

Operators pin names (an internal service, a test origin) without touching /etc/hosts; with
`fallback_to_system=False` a name outside the table fails at once like NXDOMAIN, so a machine
without DNS (or a test) never sends a query anywhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any, cast

import trio

_AddrInfo = Any  # trio's declared element type of getaddrinfo() results


def _normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _nxdomain(host: object) -> socket.gaierror:
    return socket.gaierror(socket.EAI_NONAME, f"Name or service not known: {host!r}")


class StaticResolver(trio.abc.HostnameResolver):
    """Answers names from `hosts` (name -> IP literal); others go to the system or fail."""

    def __init__(self, hosts: Mapping[str, str], fallback_to_system: bool = False) -> None:
        self.hosts = {_normalize(name): str(ipaddress.ip_address(ip)) for name, ip in hosts.items()}
        self.fallback_to_system = fallback_to_system

    def __repr__(self) -> str:
        return f"StaticResolver({len(self.hosts)} names, fallback={self.fallback_to_system})"

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[_AddrInfo]:
        name = _normalize(host.decode("ascii")) if host is not None else None
        address = self.hosts.get(name) if name is not None else None
        if address is not None:
            # A numeric lookup: the C library answers it without any query (nothing to wait
            # for, so no trip through the scheduler either).
            await trio.lowlevel.checkpoint_if_cancelled()
            return cast(
                "list[_AddrInfo]",
                socket.getaddrinfo(
                    address, port, family, type, proto, flags | socket.AI_NUMERICHOST
                ),
            )
        if not self.fallback_to_system:
            await trio.lowlevel.checkpoint()
            raise _nxdomain(name)
        return cast(
            "list[_AddrInfo]",
            await trio.to_thread.run_sync(
                socket.getaddrinfo, host, port, family, type, proto, flags, abandon_on_cancel=True
            ),
        )

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        for name, address in self.hosts.items():
            if address == sockaddr[0]:
                await trio.lowlevel.checkpoint()
                return name, str(sockaddr[1])
        if not self.fallback_to_system:
            await trio.lowlevel.checkpoint()
            raise _nxdomain(sockaddr[0])
        return await trio.to_thread.run_sync(
            socket.getnameinfo, sockaddr, flags, abandon_on_cancel=True
        )


def install(resolver: trio.abc.HostnameResolver | None) -> trio.abc.HostnameResolver | None:
    """Use `resolver` for every lookup in this trio run; returns the one it replaces."""
    return trio.socket.set_custom_hostname_resolver(resolver)
