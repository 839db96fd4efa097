"""The bound on connections in their TLS handshake: who is shed when it is full."""

from __future__ import annotations

import pytest
import trio

from fluidity.server.handshakes import PendingHandshakes, source_of

FAR = 1e9  # a deadline that never comes in these tests


def test_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert source_of("203.0.113.7") == "203.0.113.7"
    assert source_of("::ffff:203.0.113.7") == "203.0.113.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::2")
    assert source_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("unknown peer") == "unknown peer"


async def test_one_source_at_its_cap_loses_its_oldest_silent_connection() -> None:
    pending = PendingHandshakes(max_total=64, max_per_source=3)
    agent = pending.admit("198.51.100.1", FAR)
    agent.talking = True  # its ClientHello arrived
    flood = [pending.admit("198.51.100.1", FAR) for _ in range(2)]
    other = pending.admit("198.51.100.2", FAR)
    newer = pending.admit("198.51.100.1", FAR)  # the source is at 3: one must go
    assert flood[0].shed
    assert flood[0].scope.cancel_called
    assert not agent.shed  # talking TLS: kept while a silent one can go
    assert not flood[1].shed
    assert not other.shed  # another source is not touched
    assert len(pending) == 4
    for _ in range(10):
        pending.admit("198.51.100.1", FAR)
    assert not agent.shed
    assert newer.shed  # silent, and older than the ten after it
    assert len(pending) == 4  # 3 from the flooding source (the agent among them) + 1


async def test_the_global_cap_sheds_the_oldest_silent_connection_anywhere() -> None:
    pending = PendingHandshakes(max_total=4, max_per_source=100)
    talking = pending.admit("192.0.2.1", FAR)
    talking.talking = True
    silent = [pending.admit(f"192.0.2.{i}", FAR) for i in range(2, 5)]
    newest = pending.admit("192.0.2.9", FAR)
    assert [p.shed for p in silent] == [True, False, False]
    assert not talking.shed
    assert not newest.shed
    assert len(pending) == 4


async def test_when_all_are_talking_the_oldest_goes() -> None:
    pending = PendingHandshakes(max_total=2, max_per_source=100)
    first, second = pending.admit("192.0.2.1", FAR), pending.admit("192.0.2.2", FAR)
    first.talking = second.talking = True
    pending.admit("192.0.2.3", FAR)
    assert (first.shed, second.shed) == (True, False)


async def test_done_forgets_once_and_frees_the_source() -> None:
    pending = PendingHandshakes(max_total=2, max_per_source=1)
    one = pending.admit("192.0.2.1", FAR)
    pending.done(one)
    pending.done(one)  # shed and then finished: both call it
    assert len(pending) == 0
    two = pending.admit("192.0.2.1", FAR)
    assert not two.shed


async def test_shedding_warns_once_per_burst_naming_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pending = PendingHandshakes(max_total=64, max_per_source=2)
    for _ in range(50):
        pending.admit("192.0.2.1", FAR)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "max_handshakes_per_source=2" in warnings[0]


async def test_the_scope_carries_the_handshake_deadline() -> None:
    pending = PendingHandshakes(max_total=2, max_per_source=2)
    entry = pending.admit("192.0.2.1", trio.current_time() + 5)
    assert entry.scope.deadline == pytest.approx(trio.current_time() + 5, abs=0.5)
