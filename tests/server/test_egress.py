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


@pytest.mark.parametrize("address", ["93.184.216.34", "10.1.2.3", "2606:4700::1111", "fd00::1"])
def test_default_policy_allows_the_rest(address: str) -> None:
    assert EgressPolicy().allows(address)


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
