"""The server's Prometheus metrics (GET /metrics on the health port) and access log.

The tunnel listener reports links coming up and going down and failed handshakes; the stream
handler reports each stream as it ends. Open streams and the last activity are the
`ActivityTracker`'s, the same numbers the CloudWatch emitter (`metrics`) sends as
ActiveConnections and LastActivityEpochSeconds: one set of counters, two ways out. The
names and labels are listed in docs/metrics.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fluidity.telemetry import (
    KIND_NAMES,
    AccessLog,
    Collector,
    LinkBytes,
    Tally,
    describe_head,
    exposition,
    stream_outcome,
)
from fluidity.tunnel import Link, TunnelStream

from .activity import ActivityTracker

PREFIX = "fluidity_server"


class ServerMetrics:
    """The server's counters, its registry, and its access log."""

    def __init__(
        self, activity: ActivityTracker | None = None, *, access_log: bool = False
    ) -> None:
        self.activity = activity if activity is not None else ActivityTracker()
        self.registry = CollectorRegistry()
        self.tally = Tally()
        self.access = AccessLog("fluidity.server.access", access_log)
        #: Open links, oldest first (a dict keeps order).
        self.links: dict[Link, None] = {}
        self.links_total = 0
        self.link_bytes = LinkBytes()
        self.handshake_failures: Counter[str] = Counter()
        self.registry.register(Collector(self._collect))

    # -- events --------------------------------------------------------------------------

    def link_up(self, link: Link) -> None:
        self.links[link] = None
        self.links_total += 1

    def link_down(self, link: Link) -> None:
        if link in self.links:
            del self.links[link]
            self.link_bytes.retire(link.bytes_sent, link.bytes_received)

    def handshake_failed(self, cause: str) -> None:
        self.handshake_failures[cause] += 1

    def stream_done(self, stream: TunnelStream, started: float) -> None:
        """A stream's handler returned: count it, and log it if the access log is on."""
        kind = KIND_NAMES[stream.kind]
        outcome = stream_outcome(stream)
        # The agent's upload is what this side received.
        upload, download = stream.received_bytes, stream.sent_bytes
        self.tally.add(kind, outcome, upload, download)
        if self.access.enabled:
            method, host = describe_head(stream.head)
            reply = stream.reply
            self.access.record(
                kind=kind,
                method=method,
                host=host,
                status=reply.status if reply is not None else None,
                outcome=outcome,
                upload=upload,
                download=download,
                started=started,
                stream_id=stream.stream_id,
            )

    # -- exposition ----------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics as /metrics answers them, and their content type."""
        return exposition(self.registry, accept)

    def _collect(self) -> Iterator[Metric]:
        links = list(self.links)
        yield GaugeMetricFamily(f"{PREFIX}_links", "Agent links open now.", len(links))
        yield CounterMetricFamily(
            f"{PREFIX}_links_opened", "Agent links that came up (TLS and handshake done).",
            self.links_total,
        )  # fmt: skip
        failures = CounterMetricFamily(
            f"{PREFIX}_handshake_failures",
            "Connections that did not become links, by cause (tls, certificate, timeout, "
            "shed, refused, link).",
            labels=["cause"],
        )
        for cause, count in sorted(self.handshake_failures.items()):
            failures.add_metric([cause], count)
        yield failures
        yield from self.tally.families(PREFIX)
        yield self.link_bytes.family(
            PREFIX, [(link.bytes_sent, link.bytes_received) for link in links], agent=False
        )
        snapshot = self.activity.snapshot()
        yield GaugeMetricFamily(
            f"{PREFIX}_open_streams",
            "Proxied streams open now (CloudWatch: ActiveConnections).",
            snapshot.active,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_last_activity_timestamp_seconds",
            "When a stream last opened, closed or moved a byte, as Unix time; the start "
            "time before the first (CloudWatch: LastActivityEpochSeconds).",
            snapshot.last_activity_epoch,
        )
        newest = next((link for link in reversed(links) if link.rtt is not None), None)
        if newest is not None and newest.rtt is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_link_rtt_seconds",
                "The newest link's smoothed round-trip time (from its keepalive pings).",
                newest.rtt,
            )
