"""Scrape a /metrics endpoint as Prometheus would, and read its samples."""

from __future__ import annotations

import attrs
import httpx2
from prometheus_client.parser import text_string_to_metric_families


@attrs.frozen
class Samples:
    """Every sample of one scrape: (name, sorted labels) -> value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it is absent (a counter no event has created yet)."""
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.values

    def delta(self, before: Samples, name: str, **labels: str) -> float:
        return self.get(name, **labels) - before.get(name, **labels)


async def scrape(port: int, *, path: str = "/metrics") -> Samples:
    """GET http://127.0.0.1:port/metrics, checked to be Prometheus text; its samples."""
    async with httpx2.AsyncClient(trust_env=False, timeout=10) as http:
        response = await http.get(f"http://127.0.0.1:{port}{path}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return Samples(values)
