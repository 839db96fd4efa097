"""StaticResolver: fixed answers, NXDOMAIN without a query, the system only when allowed."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from fluidity.server.resolver import StaticResolver, install


async def test_known_names_resolve_without_the_system_resolver(
    no_dns_queries: list[tuple[Any, ...]],
) -> None:
    install(StaticResolver({"Origin.Test.": "127.0.0.1", "six.test": "::1"}))
    infos = await trio.socket.getaddrinfo("origin.test", 8080, type=socket.SOCK_STREAM)
    assert [info[4] for info in infos] == [("127.0.0.1", 8080)]
    infos = await trio.socket.getaddrinfo("SIX.test.", "https", type=socket.SOCK_STREAM)
    assert [info[4][:2] for info in infos] == [("::1", 443)]
    assert no_dns_queries == []


async def test_unknown_names_fail_like_nxdomain(no_dns_queries: list[tuple[Any, ...]]) -> None:
    install(StaticResolver({"origin.test": "127.0.0.1"}, fallback_to_system=False))
    with pytest.raises(socket.gaierror) as caught:
        await trio.socket.getaddrinfo("example.com", 80)
    assert caught.value.errno == socket.EAI_NONAME
    assert no_dns_queries == []


async def test_fallback_asks_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []
    numeric = socket.getaddrinfo

    def system(host: Any, port: Any, *args: Any) -> Any:  # stands in for the C library
        if len(args) >= 4 and args[3] & socket.AI_NUMERICHOST:
            return numeric(host, port, *args)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", system)
    install(StaticResolver({"origin.test": "127.0.0.1"}, fallback_to_system=True))
    infos = await trio.socket.getaddrinfo("elsewhere.test", 80, type=socket.SOCK_STREAM)
    assert [info[4] for info in infos] == [("192.0.2.7", 80)]
    infos = await trio.socket.getaddrinfo("origin.test", 80, type=socket.SOCK_STREAM)
    assert [info[4] for info in infos] == [("127.0.0.1", 80)]
    assert asked == [b"elsewhere.test"]


async def test_reverse_lookups_come_from_the_table() -> None:
    install(StaticResolver({"origin.test": "127.0.0.1"}))
    assert await trio.socket.getnameinfo(("127.0.0.1", 80), 0) == ("origin.test", "80")
    with pytest.raises(socket.gaierror):
        await trio.socket.getnameinfo(("10.0.0.1", 80), 0)


def test_the_table_holds_addresses_only() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        StaticResolver({"a.test": "b.test"})


async def test_install_returns_the_previous_resolver() -> None:
    first = StaticResolver({})
    assert install(first) is None
    assert install(None) is first
