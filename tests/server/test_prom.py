"""The server's Prometheus metrics and its CloudWatch metrics read one set of counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from fluidity.server.activity import ActivityTracker
from fluidity.server.handler import open_stream_handler
from fluidity.server.metrics import (
    ACTIVE_CONNECTIONS,
    LAST_ACTIVITY,
    MetricsSettings,
    build_request,
)
from fluidity.server.prom import ServerMetrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _samples(metrics: ServerMetrics) -> dict[str, float]:
    text, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if not sample.labels
    }


def test_cloudwatch_sends_what_prometheus_shows() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(clock)
    metrics = ServerMetrics(tracker)
    assert _samples(metrics)["fluidity_server_last_activity_timestamp_seconds"] == 1000.0
    clock.now = 1010.0
    tracker.opened()
    tracker.opened()
    clock.now = 1020.0
    tracker.touch()
    shown = _samples(metrics)
    request = build_request(MetricsSettings(), tracker.snapshot(), now=1030.0)
    sent = {datum["MetricName"]: datum["Value"] for datum in request["MetricData"]}
    assert sent == {ACTIVE_CONNECTIONS: 2.0, LAST_ACTIVITY: 1020.0}
    assert shown["fluidity_server_open_streams"] == sent[ACTIVE_CONNECTIONS]
    assert shown["fluidity_server_last_activity_timestamp_seconds"] == sent[LAST_ACTIVITY]
    tracker.closed()
    assert _samples(metrics)["fluidity_server_open_streams"] == 1.0


async def test_the_stream_handler_counts_into_the_metrics_activity() -> None:
    metrics = ServerMetrics(access_log=True)
    async with open_stream_handler(metrics=metrics) as handler:
        assert handler.metrics is metrics
        assert handler.activity is metrics.activity
        assert handler.metrics.access.enabled
