"""Prometheus metrics and the access log: the parts the agent and the server share.

Each process keeps its own `CollectorRegistry`, never prometheus_client's global one, so tests
can run several agents and servers in one interpreter. prometheus_client does the exposition
(text or OpenMetrics, as the scraper asks) and the histograms; what changes per request is
plain integer arithmetic in `Tally`, read by a collector only when /metrics is scraped. Trio
runs every handler in one thread, so the per-metric locks prometheus_client takes on each
`inc()` (about 0.4 us each, three per request) would buy nothing on the hot path.

The access log is one line at INFO per proxied request or tunnel, off by default. It names
the host (and port), never the path, the query string or any credential: a URL's path and
query often carry tokens, and its user-info a password.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Iterator

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from fluidity.protocol import (
    Connect,
    ErrorCode,
    Request,
    Response,
    StreamKind,
    StreamMessage,
    WebSocketOpen,
)
from fluidity.tunnel import LinkClosed, StreamReset, TunnelStream

__all__ = [
    "AccessLog",
    "Tally",
    "authority",
    "exposition",
    "failure_cause",
    "status_class",
    "stream_outcome",
]

#: What a stream's kind is called in metrics and the access log.
KIND_NAMES = {
    StreamKind.REQUEST: "http",
    StreamKind.CONNECT: "connect",
    StreamKind.WEBSOCKET: "websocket",
}
#: Longest host name kept in a log line (a DNS name is at most 253 characters).
MAX_HOST = 260


def status_class(status: int) -> str:
    """``"2xx"`` for 204: the outcome label of an answered request."""
    return f"{status // 100}xx" if 100 <= status < 600 else "error"


class Tally:
    """Requests and tunnels by kind and outcome, with the payload bytes each carried.

    `add()` runs once per request or tunnel, when it ends; `families()` turns the counts into
    counters at scrape time.
    """

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        #: (kind, outcome) -> [count, upload bytes, download bytes]
        self._rows: dict[tuple[str, str], list[int]] = {}

    def add(self, kind: str, outcome: str, upload: int, download: int) -> None:
        row = self._rows.get((kind, outcome))
        if row is None:
            row = self._rows[kind, outcome] = [0, 0, 0]
        row[0] += 1
        row[1] += upload
        row[2] += download

    def count(self, kind: str, outcome: str) -> int:
        row = self._rows.get((kind, outcome))
        return row[0] if row is not None else 0

    def families(self, prefix: str) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{prefix}_requests",
            "Proxied HTTP requests, CONNECT tunnels and WebSockets that ended, by kind "
            "and outcome (the status class of the answer; ok or error for an accepted tunnel).",
            labels=["kind", "outcome"],
        )
        payload = CounterMetricFamily(
            f"{prefix}_stream_bytes",
            "Payload bytes carried by ended requests and tunnels (bodies, tunnel bytes, "
            "WebSocket message data; no heads), by kind and direction.",
            labels=["kind", "direction"],
        )
        by_kind: dict[str, list[int]] = {kind: [0, 0] for kind in KIND_NAMES.values()}
        for (kind, outcome), (count, upload, download) in sorted(self._rows.items()):
            requests.add_metric([kind, outcome], count)
            sums = by_kind[kind]
            sums[0] += upload
            sums[1] += download
        for kind, (upload, download) in by_kind.items():
            payload.add_metric([kind, "upload"], upload)
            payload.add_metric([kind, "download"], download)
        yield requests
        yield payload


class LinkBytes:
    """Bytes written and read on links, the closed ones included, so the totals only grow.

    The owner calls `retire()` with a link's counts as it closes, in the same step that stops
    it counting as open (so no scrape sees it twice or not at all); the open links' counts are
    passed to `family()`.
    """

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    def retire(self, sent: int, received: int) -> None:
        self.sent += sent
        self.received += received

    def family(self, prefix: str, live: Iterable[tuple[int, int]], *, agent: bool) -> Metric:
        sent, received = self.sent, self.received
        for s, r in live:
            sent += s
            received += r
        family = CounterMetricFamily(
            f"{prefix}_link_bytes",
            "Bytes written to and read from the tunnel's links (frames, before TLS), by "
            "direction: upload is agent to server.",
            labels=["direction"],
        )
        family.add_metric(["upload"], sent if agent else received)
        family.add_metric(["download"], received if agent else sent)
        return family


def failure_cause(exc: BaseException) -> str:
    """Why a connection failed before its link came up, as a metric label (a short fixed
    set: timeout, refused, dns, network, certificate, tls, closed, link)."""
    group = exc.__cause__
    while isinstance(group, BaseExceptionGroup) and group.exceptions:
        # trio.open_tcp_stream: "all attempts to connect failed", each attempt's error inside
        exc = group = group.exceptions[0]
    if isinstance(exc, trio.TooSlowError | TimeoutError):
        return "timeout"
    if isinstance(exc, LinkClosed):
        return "link"  # TLS worked; the tunnel's own handshake did not
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    cause = exc.__cause__ or exc.__context__
    for error in (exc, cause):
        if isinstance(error, ssl.SSLCertVerificationError):
            return "certificate"
        if isinstance(error, ssl.SSLError):
            return "tls"
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        return "closed"
    if isinstance(exc, OSError) and exc.__class__.__name__ == "gaierror":
        return "dns"
    if isinstance(exc, OSError):
        return "network"
    return "other"


def stream_outcome(stream: TunnelStream) -> str:
    """The server's outcome of a stream it served: the status class of its answer, ok for
    an accepted tunnel, error when the link or the origin failed it or nothing was answered.

    A stream the agent cancelled (its client left) keeps the outcome of its answer.
    """
    error = stream.error
    if isinstance(error, LinkClosed) or (
        isinstance(error, StreamReset) and error.code != ErrorCode.CANCEL
    ):
        return "error"
    reply = stream.reply
    if reply is None:
        return "error"
    if isinstance(reply, Response):
        return status_class(reply.status)
    return "ok" if reply.success else status_class(reply.status)


def authority(target: bytes | str) -> str:
    """The host[:port] of a request target (absolute-form or authority-form), without the
    user-info, the path or the query: what the access log may show."""
    text = target.decode("ascii", "replace") if isinstance(target, bytes) else target
    _, sep, rest = text.partition("://")
    if not sep:
        rest = text
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    host = rest.rpartition("@")[2]
    return host[:MAX_HOST] or "-"


def describe_head(head: StreamMessage) -> tuple[str, str]:
    """The method and host an opened stream names, for the access log."""
    if isinstance(head, Request):
        return head.method.decode("ascii", "replace"), authority(head.url)
    if isinstance(head, Connect):
        host = f"[{head.host}]" if ":" in head.host else head.host
        return "CONNECT", f"{host[:MAX_HOST]}:{head.port}"
    if isinstance(head, WebSocketOpen):
        return "GET", authority(head.url)
    return "-", "-"


class AccessLog:
    """One INFO line per request or tunnel on `logger`, when `enabled`.

    The message says what ended ("request" or "tunnel"); the fields are passed as ``extra``
    so that they are key=value pairs in text logs and keys of the object in JSON ones.
    """

    __slots__ = ("enabled", "log")

    def __init__(self, logger: str, enabled: bool) -> None:
        self.enabled = enabled
        self.log = logging.getLogger(logger)

    def record(
        self,
        *,
        kind: str,
        method: str,
        host: str,
        status: int | None,
        outcome: str,
        upload: int,
        download: int,
        started: float,
        stream_id: int | None,
        client: str | None = None,
    ) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return  # on, but under a log_level above info
        fields: dict[str, object] = {
            "kind": kind,
            "method": method,
            "host": host,
            "status": status,
            "outcome": outcome,
            "upload_bytes": upload,
            "download_bytes": download,
            "duration_ms": round((trio.current_time() - started) * 1000, 1),
            "stream": stream_id,
        }
        if client is not None:
            fields["client"] = client
        self.log.info("request" if kind == "http" else "tunnel", extra=fields)


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The registry's metrics in the format the scraper's Accept header asks for (Prometheus
    text by default, OpenMetrics when asked), and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class Collector:
    """A prometheus_client collector made of a function (it reads state at scrape time)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()
