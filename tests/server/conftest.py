"""Fixtures: local origins, a test CA, and a resolver that never sends a DNS query."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio.testing

from fluidity.server.resolver import StaticResolver, install
from tests.server.harness import TEST_HOSTS
from tests.support.origins import (
    HTTPOrigin,
    TCPOrigin,
    WebSocketOrigin,
    http_origin,
    tcp_echo_origin,
    websocket_origin,
)
from tests.support.pki import TestTLS, make_tls


@pytest.fixture(autouse=True)
def no_dns_queries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Refuse, record and fail any system lookup of a name (literals are fine)."""
    lookups: list[tuple[Any, ...]] = []
    real = socket.getaddrinfo

    def guarded(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        if not flags & socket.AI_NUMERICHOST:
            lookups.append((host, port))
            raise socket.gaierror(socket.EAI_NONAME, "tests send no DNS queries")
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield lookups
    assert not lookups, f"something asked the system resolver about {lookups}"


@pytest.fixture
async def static_resolver() -> StaticResolver:
    """Installed for the test's trio run (`serving()` installs one too)."""
    resolver = StaticResolver(TEST_HOSTS, fallback_to_system=False)
    install(resolver)
    return resolver


@pytest.fixture(scope="session")
def tls() -> TestTLS:
    return make_tls("localhost", "127.0.0.1", "origin.test")


@pytest.fixture
async def origin() -> AsyncIterator[HTTPOrigin]:
    async with http_origin() as running:
        yield running


@pytest.fixture
async def tls_origin(tls: TestTLS) -> AsyncIterator[HTTPOrigin]:
    async with http_origin(tls=tls.server) as running:
        yield running


@pytest.fixture
async def echo_origin() -> AsyncIterator[TCPOrigin]:
    async with tcp_echo_origin() as running:
        yield running


@pytest.fixture
async def ws_origin() -> AsyncIterator[WebSocketOrigin]:
    async with websocket_origin() as running:
        yield running


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """pytest-trio's, but virtual time jumps only after 50 ms of real idleness: these tests
    move bytes over real sockets, where both ends can look blocked for a moment (the kernel
    acknowledges loopback data a little later, later still on a busy machine where its
    softirq thread waits for a CPU), and a jump then would fire a timeout that never really
    ran out. (Memory-stream tests elsewhere keep pytest-trio's threshold of 0.)"""
    return trio.testing.MockClock(autojump_threshold=0.05)
