"""The egress policy and `open_tcp`: what may be reached, and the errors for what may not."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from fluidity.server import egress
from fluidity.server.egress import (
    ConnectRefused,
    ConnectTimeout,
    DnsError,
    EgressDenied,
    EgressPolicy,
    UpstreamError,
    open_tcp,
)
from fluidity.server.resolver import StaticResolver, install
from tests.support.origins import TCPOrigin

LOOPBACK = EgressPolicy(allow=["127.0.0.1/32"])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",  # IPv4-mapped: the kernel connects to 127.0.0.1
        "::ffff:169.254.169.254",
    ],
)
def test_default_policy_refuses_local_and_metadata_addresses(address: str) -> None:
    assert not EgressPolicy().allows(address)


#: One address in each private range refused by default, and one NAT64 form of each kind.
PRIVATE = [
    "10.1.2.3",  # RFC 1918
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT (RFC 6598)
    "100.127.255.254",
    "fd00::1",  # unique local (RFC 4193)
    "fc00::1",
    "fd00:ec2::23",  # AWS's IPv6 DNS resolver
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",  # NAT64 well-known prefix, 10.0.0.1 inside
    "64:ff9b::c0a8:101",  # 192.168.1.1
    "64:ff9b::6440:1",  # 100.64.0.1
    "64:ff9b::7f00:1",  # 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use prefix, /96 layout: 10.0.0.1
    "64:ff9b:1:a00:0:100::",  # local-use prefix, /48 layout: 10.0.0.1
    "64:ff9b:1:ffff:a:0:100::",  # /64 layout: 10.0.0.1
    "64:ff9b:1:1:ff00:0:808:808",  # the "u" octet set: no valid layout, so no telling
    "2002:7f00:1::1",  # 6to4 through the gateway 127.0.0.1
    "2002:a00:1::1",  # 6to4 through 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 through the metadata address
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (RFC 4380's example): client 192.0.2.45
    "2001:0:a00:1:8000:63bf:7f7f:fffe",  # Teredo server 10.0.0.1, client 128.128.0.1
    "192.0.2.1",  # documentation (RFC 5737): no origin lives there
    "198.51.100.7",
    "203.0.113.9",
    "2001:db8::1",
    "198.18.0.1",  # benchmarking
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "224.0.0.1",  # multicast
    "ff02::1",
]


@pytest.mark.parametrize("address", PRIVATE)
def test_default_policy_refuses_private_networks(address: str) -> None:
    policy = EgressPolicy()
    assert not policy.allows(address)
    assert "egress_allow" in (policy.refusal(address) or "")


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "2606:4700::1111",
        "100.128.0.1",  # just past carrier-grade NAT
        "172.32.0.1",  # just past 172.16.0.0/12
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
        "64:ff9b:1::808:808",  # local-use /96 layout: 8.8.8.8
        "2002:808:808::1",  # 6to4 through 8.8.8.8
        "2001:0:808:808:8000:63bf:a2b7:f7f7",  # Teredo server 8.8.8.8, client 93.72.8.8
    ],
)
def test_default_policy_allows_the_rest(address: str) -> None:
    assert EgressPolicy().allows(address)


@pytest.mark.parametrize(
    ("allow", "address"),
    [
        ("10.0.0.0/8", "10.1.2.3"),
        ("172.16.0.0/12", "172.20.0.1"),
        ("192.168.1.0/24", "192.168.1.1"),
        ("100.64.0.0/10", "100.64.0.1"),
        ("fc00::/7", "fd00::1"),
        ("10.0.0.0/8", "64:ff9b::a00:1"),  # the IPv4 address inside is what is allowed
        ("64:ff9b:1::/48", "64:ff9b:1::a00:1"),  # or the NAT64 range itself
        ("10.0.0.0/8", "2002:a00:1::1"),  # 6to4: the IPv4 gateway inside
    ],
)
def test_egress_allow_reopens_a_private_range(allow: str, address: str) -> None:
    """The decision only: no test connects to a private address."""
    assert EgressPolicy(allow=[allow]).allows(address)
    assert EgressPolicy(allow=[allow], deny=[allow]).refusal(address) == "egress_deny lists it"


class _RecordingConnect:
    """Stands in for egress._connect: records what would have been connected to."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def __call__(self, candidate: Any) -> trio.SocketStream:
        self.calls.append(candidate)
        raise AssertionError("the policy let a private address through to connect()")


@pytest.mark.parametrize("address", PRIVATE)
async def test_private_destinations_are_refused_before_connecting(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = _RecordingConnect()
    monkeypatch.setattr(egress, "_connect", connect)
    install(StaticResolver({"private.test": address}, fallback_to_system=False))
    with trio.fail_after(5):
        for host in (address, "private.test"):
            with pytest.raises(EgressDenied, match="unless egress_allow lists them") as caught:
                await open_tcp(host, 443, policy=EgressPolicy(), connect_timeout=5)
            assert caught.value.status == 403
    assert connect.calls == []


def test_allow_overrides_the_defaults_and_deny_adds_more() -> None:
    policy = EgressPolicy(allow=["127.0.0.1/32", "::1"], deny=["10.0.0.0/8", "127.0.0.1"])
    assert policy.allows("::1")
    assert not policy.allows("127.0.0.2")  # still a default
    assert not policy.allows("10.20.30.40")
    assert not policy.allows("127.0.0.1")  # an explicit deny beats an allow


def test_policy_rejects_bad_cidrs() -> None:
    with pytest.raises(ValueError, match="has host bits set"):
        EgressPolicy(allow=["127.0.0.1/8"])
    with pytest.raises(TypeError):
        EgressPolicy(allow="127.0.0.1/32")


def test_every_error_carries_its_status() -> None:
    assert [cls("x").status for cls in (DnsError, ConnectRefused, ConnectTimeout)] == [
        502,
        502,
        504,
    ]
    assert EgressDenied("x").status == 403
    assert issubclass(EgressDenied, UpstreamError)
    assert (UpstreamError(502, "why").status, str(UpstreamError(502, "why"))) == (502, "why")


async def test_connects_to_an_allowed_address(echo_origin: TCPOrigin) -> None:
    stream = await open_tcp("127.0.0.1", echo_origin.port, policy=LOOPBACK, connect_timeout=5)
    async with stream:
        await stream.send_all(b"hi")
        assert await stream.receive_some() == b"hi"


async def test_ip_literals_are_checked(echo_origin: TCPOrigin) -> None:
    with pytest.raises(EgressDenied, match=r"destination 127\.0\.0\.1 is not allowed by the"):
        await open_tcp("127.0.0.1", echo_origin.port, policy=EgressPolicy(), connect_timeout=5)
    assert echo_origin.connections == 0


async def test_names_are_checked_after_resolution(
    echo_origin: TCPOrigin, static_resolver: StaticResolver
) -> None:
    with pytest.raises(EgressDenied, match=r"origin.test \(127.0.0.1\)"):
        await open_tcp("origin.test", echo_origin.port, policy=EgressPolicy(), connect_timeout=5)
    stream = await open_tcp("origin.test", echo_origin.port, policy=LOOPBACK, connect_timeout=5)
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert echo_origin.connections == 1


class _MixedResolver(trio.abc.HostnameResolver):
    """A name with a denied address first and an allowed one second."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        stream = socket.SOCK_STREAM
        return [
            (socket.AF_INET, stream, 6, "", ("169.254.169.254", self.port)),
            (socket.AF_INET, stream, 6, "", ("127.0.0.1", self.port)),
        ]

    async def getnameinfo(self, *args: Any) -> Any:
        raise OSError("getnameinfo is not used by these tests")


async def test_denied_addresses_are_skipped_not_tried(echo_origin: TCPOrigin) -> None:
    install(_MixedResolver(echo_origin.port))
    with trio.fail_after(5):  # 169.254.169.254 would hang (and leave the machine)
        stream = await open_tcp("mixed.test", echo_origin.port, policy=LOOPBACK, connect_timeout=5)
    assert stream.socket.getpeername()[0] == "127.0.0.1"
    await stream.aclose()


async def test_the_connected_peer_is_checked_again(
    echo_origin: TCPOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was checked must be what was reached (no gap for a rebinding or a NAT trick)."""
    real_connect = egress._connect

    async def connect_elsewhere(candidate: Any) -> trio.SocketStream:
        stream = await real_connect(candidate)
        stream.socket.getpeername = lambda: ("169.254.169.254", 80)  # type: ignore[method-assign]
        return stream

    monkeypatch.setattr(egress, "_connect", connect_elsewhere)
    with pytest.raises(EgressDenied, match=r"127\.0\.0\.1 \(169\.254\.169\.254\)"):
        await open_tcp("127.0.0.1", echo_origin.port, policy=LOOPBACK, connect_timeout=5)


async def test_unknown_names_fail_as_dns_errors(static_resolver: StaticResolver) -> None:
    with pytest.raises(DnsError, match=r"could not resolve host nowhere\.test") as caught:
        await open_tcp("nowhere.test", 80, policy=LOOPBACK, connect_timeout=5)
    assert caught.value.status == 502


async def test_refused_connections() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectRefused, match=f"connection to 127.0.0.1:{port} refused"):
        await open_tcp("127.0.0.1", port, policy=LOOPBACK, connect_timeout=5)


class _SlowResolver(trio.abc.HostnameResolver):
    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep_forever()

    async def getnameinfo(self, *args: Any) -> Any:
        raise OSError("getnameinfo is not used by these tests")


async def test_the_connect_timeout_covers_resolution_and_connecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    install(_SlowResolver())
    start = trio.current_time()
    with pytest.raises(ConnectTimeout, match=r"slow\.test:443 timed out after 7 s") as caught:
        await open_tcp("slow.test", 443, policy=LOOPBACK, connect_timeout=7)
    assert trio.current_time() - start == pytest.approx(7)
    assert caught.value.status == 504


async def test_a_full_accept_queue_times_out(autojump_clock: trio.testing.MockClock) -> None:
    """A listener whose backlog is full drops SYNs: the connect hangs until the timeout."""
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[trio.SocketStream] = []

        async def fill() -> None:
            for _ in range(8):  # the first one or two fill the queue, then one hangs
                fillers.append(
                    await open_tcp("127.0.0.1", port, policy=LOOPBACK, connect_timeout=3)
                )

        try:
            with pytest.raises(ConnectTimeout):
                await fill()
        finally:
            for filler in fillers:
                await filler.aclose()


async def test_ipv6_loopback_when_allowed(static_resolver: StaticResolver) -> None:
    try:
        listeners = await trio.open_tcp_listeners(0, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        with pytest.raises(EgressDenied):
            await open_tcp("loopback6.test", port, policy=LOOPBACK, connect_timeout=5)
        allowed = EgressPolicy(allow=["::1/128"])
        stream = await open_tcp("loopback6.test", port, policy=allowed, connect_timeout=5)
        assert stream.socket.getpeername()[0] == "::1"
        await stream.aclose()
