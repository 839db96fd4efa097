"""The shared metrics pieces: failure causes from real failures, what the access log may show
of a target, the tally's counters, and the link byte totals."""

from __future__ import annotations

import contextlib
import socket
import ssl

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fluidity.protocol import Connect, Request, WebSocketOpen
from fluidity.telemetry import (
    Collector,
    LinkBytes,
    Tally,
    authority,
    describe_head,
    failure_cause,
    status_class,
)
from fluidity.tunnel import LinkClosed
from tests.support.pki import TestTLS, make_tls


async def test_a_refused_connection_is_refused() -> None:
    with socket.socket() as closed:  # bound, not listening: the port stays ours and refuses
        closed.bind(("127.0.0.1", 0))
        with trio.fail_after(10), pytest.raises(OSError, match="all attempts") as caught:
            await trio.open_tcp_stream("127.0.0.1", closed.getsockname()[1])
    # trio wraps each attempt's error in a group under "all attempts to connect ... failed".
    assert failure_cause(caught.value) == "refused"


async def _handshake(server: TestTLS, client: TestTLS) -> BaseException:
    """A TLS handshake over memory streams between `server`'s server context and `client`'s
    client context; the client's error."""
    server_context, client_context = server.server, client.client
    left, right = trio.testing.memory_stream_pair()
    client_side = trio.SSLStream(left, client_context, server_hostname="fluidity-server")
    server_side = trio.SSLStream(right, server_context, server_side=True)

    async def serve() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await server_side.do_handshake()

    error: BaseException | None = None
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                await client_side.do_handshake()
            except trio.BrokenResourceError as exc:
                error = exc
            await trio.aclose_forcefully(left)
    assert error is not None, "the handshake succeeded"
    return error


async def test_a_server_certificate_from_another_ca_is_a_certificate_failure() -> None:
    error = await _handshake(make_tls("fluidity-server"), make_tls("fluidity-server"))
    assert failure_cause(error) == "certificate"


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (trio.TooSlowError(), "timeout"),
        (LinkClosed("handshake timed out"), "link"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns"),
        (OSError(113, "No route to host"), "network"),
        (trio.BrokenResourceError(), "closed"),
        (ValueError("a bug"), "other"),
    ],
)
def test_failure_causes(error: BaseException, cause: str) -> None:
    assert failure_cause(error) == cause


def test_a_tls_error_under_a_broken_stream_is_tls() -> None:
    broken = trio.BrokenResourceError()
    broken.__cause__ = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert failure_cause(broken) == "tls"


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (b"http://example.com/path?token=secret", "example.com"),
        (b"https://user:secret@example.com:8443/a#frag", "example.com:8443"),
        ("ws://[::1]:9000/chat?key=secret", "[::1]:9000"),
        (b"example.com:443", "example.com:443"),
        (b"http://example.com?q=1", "example.com"),
        (b"", "-"),
    ],
)
def test_authority_keeps_only_host_and_port(target: bytes | str, shown: str) -> None:
    assert authority(target) == shown


def test_describe_head_names_method_and_host_never_the_path() -> None:
    request = Request(1, b"POST", b"http://example.com/login?password=secret")
    assert describe_head(request) == ("POST", "example.com")
    assert describe_head(Connect(3, "2001:db8::1", 443)) == ("CONNECT", "[2001:db8::1]:443")
    assert describe_head(WebSocketOpen(5, "wss://example.com/ws?t=secret")) == (
        "GET",
        "example.com",
    )


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 204, 302, 404, 502, 99, 600)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx", "error", "error",
    ]  # fmt: skip


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[str, ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.values()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_tally_counts_by_kind_and_outcome_and_sums_bytes_by_kind() -> None:
    tally = Tally()
    tally.add("http", "2xx", 10, 1000)
    tally.add("http", "2xx", 0, 500)
    tally.add("http", "5xx", 3, 0)
    tally.add("connect", "ok", 7, 9)
    registry = CollectorRegistry()
    registry.register(Collector(lambda: tally.families("t")))
    samples = _scrape(registry)
    assert samples["t_requests_total", ("2xx", "http")] == 2
    assert samples["t_requests_total", ("5xx", "http")] == 1
    assert samples["t_requests_total", ("connect", "ok")] == 1
    assert samples["t_stream_bytes_total", ("http", "upload")] == 13
    assert samples["t_stream_bytes_total", ("download", "http")] == 1500
    assert samples["t_stream_bytes_total", ("connect", "upload")] == 7
    # Every kind has its byte counters from the start, so rate() has a first point.
    assert samples["t_stream_bytes_total", ("upload", "websocket")] == 0
    assert tally.count("http", "2xx") == 2
    assert tally.count("websocket", "ok") == 0


def test_link_bytes_keep_closed_links_and_name_directions_from_the_agent() -> None:
    totals = LinkBytes()
    totals.retire(sent=100, received=1000)

    def values(agent: bool) -> dict[str, float]:
        family = totals.family("t", [(5, 50)], agent=agent)
        return {s.labels["direction"]: s.value for s in family.samples}

    assert values(agent=True) == {"upload": 105, "download": 1050}
    # The server receives what the agent uploads.
    assert values(agent=False) == {"upload": 1050, "download": 105}
