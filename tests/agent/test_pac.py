"""The PAC file decides as the agent does: it runs in a real PAC evaluator (pypac, on the dukpy
JavaScript engine) against the rules, for a table of hosts and for generated addresses."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypac.parser import PACFile

from fluidity.agent.pac import pac_file, proxy_address
from fluidity.agent.routing import Action, Routes

from .routes_table import RULES, TABLE

PROXY = "127.0.0.1:8080"
EXPECTED = {
    Action.DIRECT: "DIRECT",
    Action.TUNNEL: f"PROXY {PROXY}",
    Action.BLOCK: f"PROXY {PROXY}",  # the agent answers blocked requests with its 403
}


@pytest.fixture(scope="module")
def routes() -> Routes:
    return Routes.parse(RULES, "direct")


@pytest.fixture(scope="module")
def pac(routes: Routes) -> PACFile:
    return PACFile(pac_file(routes, PROXY))


@pytest.mark.parametrize(("host", "action", "number"), TABLE)
def test_pac_agrees_with_the_rules(
    pac: PACFile, routes: Routes, host: str, action: Action, number: int | None
) -> None:
    assert routes.decide(host).action is action  # the table is the agent's answer...
    assert pac.find_proxy_for_url(f"https://{host}/", host) == EXPECTED[action]  # ...and PAC's


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "0010.0.0.1", "10.0.0.256", "10.0.0", "1:2:3:4:5:6:7:8:9", "fd00::1::2",
     "fd00:0:0:0:0:0:0:1", "FD00::1", "fd00::1%eth0", "::ffff:127.0.0.1", "::127.0.0.1",
     "127.0.0.1.", "[::1]", "::", "0.0.0.0", "_sip.corp.example", "-", ""],
)  # fmt: skip
def test_pac_agrees_on_address_edge_cases(pac: PACFile, routes: Routes, host: str) -> None:
    expected = EXPECTED[routes.decide(host).action]
    assert pac.find_proxy_for_url("http://x/", host) == expected, host


NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.4.0/22", "2001:db8::/32", "fd00:a8::/29")


@pytest.fixture(scope="module")
def cidr_pac() -> tuple[Routes, PACFile]:
    routes = Routes.parse(
        tuple(f"{'direct' if i % 2 else 'block'} {net}" for i, net in enumerate(NETWORKS))
    )
    return routes, PACFile(pac_file(routes, PROXY))


def _near(net: str) -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses in and just around `net`, where an off-by-one in the mask would show."""
    network = ipaddress.ip_network(net, strict=False)
    first, last = int(network.network_address), int(network.broadcast_address)
    top = 2**network.max_prefixlen - 1
    kind = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
    return st.integers(max(0, first - 256), min(top, last + 256)).map(kind)


@settings(max_examples=300, deadline=None)
@given(
    address=st.one_of(*(_near(n) for n in NETWORKS), st.ip_addresses()),
    exploded=st.booleans(),
)
def test_pac_agrees_on_generated_addresses(
    cidr_pac: tuple[Routes, PACFile],
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    exploded: bool,
) -> None:
    routes, pac = cidr_pac
    host = address.exploded if exploded and address.version == 6 else str(address)
    expected = EXPECTED[routes.decide(host).action]
    assert pac.find_proxy_for_url(f"http://{host}/", host) == expected


def test_pac_without_rules_sends_everything_the_default_way() -> None:
    for default, expected in [("tunnel", f"PROXY {PROXY}"), ("direct", "DIRECT")]:
        pac = PACFile(pac_file(Routes.parse((), default), PROXY))
        assert pac.find_proxy_for_url("https://example.com/", "example.com") == expected


def test_pac_names_the_proxy_as_the_browser_reaches_it() -> None:
    assert proxy_address("::1", 8080) == "[::1]:8080"
    assert proxy_address("proxy.lan", 3128) == "proxy.lan:3128"
    pac = PACFile(pac_file(Routes(), proxy_address("::1", 8080)))
    assert pac.find_proxy_for_url("http://a.example/", "a.example") == "PROXY [::1]:8080"
