"""The agent's Prometheus metrics (GET /metrics on the proxy's address) and access log.

The tunnel client reports links coming up and going down, failed connection attempts and
wakes; the proxy reports each request or tunnel as it ends. What is already state (the
tunnel's state, the link's open streams and RTT, client connections) is read when /metrics
is scraped, so serving traffic costs a few integer additions per request and nothing per
byte. The names and labels are listed in docs/metrics.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fluidity.telemetry import (
    AccessLog,
    Collector,
    LinkBytes,
    Tally,
    authority,
    describe_head,
    exposition,
    status_class,
)
from fluidity.tunnel import Link, TunnelStream

if TYPE_CHECKING:
    from .proxy import Proxy
    from .tunnel_client import TunnelClient

PREFIX = "fluidity_agent"
#: The status that means a tunnel was accepted, by kind.
_ACCEPTED = {"connect": 200, "socks": 200, "websocket": 101}
#: The tunnel client's states, each a sample of fluidity_agent_tunnel_state.
STATES = ("connecting", "up", "asleep", "waking", "down", "stopping", "stopped")
#: Seconds a wake may take, from a warm task (seconds) to a cold Fargate start (minutes).
WAKE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)


class AgentMetrics:
    """The agent's counters, its registry, and its access log."""

    def __init__(self, *, access_log: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.tally = Tally()
        self.access = AccessLog("fluidity.agent.access", access_log)
        self.link: Link | None = None
        self.links_up = 0
        self.link_bytes = LinkBytes()
        self.handshake_failures: Counter[str] = Counter()
        self.wake_failures = 0
        self.wake_seconds = Histogram(
            f"{PREFIX}_wake_duration_seconds",
            "Seconds from asking the control plane to wake the server to the server being up "
            "(its address known); the link comes up after.",
            buckets=WAKE_BUCKETS,
            registry=self.registry,
        )
        self._tunnel: TunnelClient | None = None
        self._proxy: Proxy | None = None
        self.registry.register(Collector(self._collect))

    def watch(self, tunnel: TunnelClient, proxy: Proxy) -> None:
        """Report the tunnel's state and the proxy's client connections too."""
        self._tunnel = tunnel
        self._proxy = proxy

    # -- events --------------------------------------------------------------------------

    def link_up(self, link: Link) -> None:
        self.link = link
        self.links_up += 1

    def link_down(self, link: Link) -> None:
        if self.link is link:
            self.link = None
            self.link_bytes.retire(link.bytes_sent, link.bytes_received)

    def handshake_failed(self, cause: str) -> None:
        """An attempt failed before the link came up; `cause` is the name `failures.classify`
        gave it (the one /healthz shows)."""
        self.handshake_failures[cause] += 1

    def woke(self, seconds: float) -> None:
        self.wake_seconds.observe(seconds)

    def wake_failed(self) -> None:
        self.wake_failures += 1

    def exchange_done(
        self,
        kind: str | None,
        request_method: bytes,
        request_target: bytes,
        status: int | None,
        stream: TunnelStream | None,
        failed: bool,
        started: float,
        peer: Callable[[], str],
    ) -> None:
        """One request or tunnel ended (kind None: one for the agent itself, not counted).

        `failed`: it did not complete (the client left, the tunnel or relay broke); else the
        outcome is the status class of the answer, or ok for an accepted tunnel.
        """
        if kind is None:
            return
        if failed or status is None:
            outcome = "error"
        elif _ACCEPTED.get(kind) == status:
            outcome = "ok"
        else:
            outcome = status_class(status)
        upload = download = 0
        if stream is not None:
            upload, download = stream.sent_bytes, stream.received_bytes
        self.tally.add(kind, outcome, upload, download)
        if self.access.enabled:
            if stream is not None:
                method, host = describe_head(stream.head)
            else:
                method, host = request_method.decode("ascii", "replace"), authority(request_target)
            self.access.record(
                kind=kind,
                method=method,
                host=host,
                status=status,
                outcome=outcome,
                upload=upload,
                download=download,
                started=started,
                stream_id=stream.stream_id if stream is not None else None,
                client=peer(),
            )

    # -- exposition ----------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics as /metrics answers them, and their content type."""
        return exposition(self.registry, accept)

    def _collect(self) -> Iterator[Metric]:
        link = self.link
        is_up = link is not None and link.is_open
        yield GaugeMetricFamily(
            f"{PREFIX}_link_up", "1 while the link to the server is up, else 0.", int(is_up)
        )
        if self._tunnel is not None:
            state = GaugeMetricFamily(
                f"{PREFIX}_tunnel_state",
                "The tunnel's state: 1 for the current one (asleep: the server sleeps until "
                "the next request).",
                labels=["state"],
            )
            for name in STATES:
                state.add_metric([name], int(self._tunnel.state == name))
            yield state
        yield CounterMetricFamily(
            f"{PREFIX}_reconnects",
            "Links to the server that came up after the first one (after a drop or a sleep).",
            max(0, self.links_up - 1),
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_handshake_failures",
            "Connection attempts that failed before the link came up, by cause.",
            labels=["cause"],
        )
        for cause, count in sorted(self.handshake_failures.items()):
            failures.add_metric([cause], count)
        yield failures
        yield CounterMetricFamily(
            f"{PREFIX}_wake_failures",
            "Wakes of the server that failed (refused, or no server within connection_timeout).",
            self.wake_failures,
        )
        yield from self.tally.families(PREFIX)
        live = [(link.bytes_sent, link.bytes_received)] if link is not None else []
        yield self.link_bytes.family(PREFIX, live, agent=True)
        yield GaugeMetricFamily(
            f"{PREFIX}_open_streams",
            "Streams open on the link now (requests and tunnels in progress).",
            len(link.streams) if link is not None else 0,
        )
        if link is not None and link.rtt is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_link_rtt_seconds",
                "The link's smoothed round-trip time (from its keepalive pings).",
                link.rtt,
            )
        if self._proxy is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_client_connections",
                "Client connections to the proxy open now.",
                len(self._proxy.connections),
            )
