"""The bench's targets stated as ratios to a peer run beside Fluidity (tests/bench/run.py)."""

from __future__ import annotations

from tests.bench.run import Row, peer_target_lines


def test_ratio_targets_pass_or_miss_by_direction_and_skip_absent_peers() -> None:
    table = [
        Row("plain HTTP bulk, 1 GiB", "MB/s", 4000, 310, "", None, {"pproxy": 300}),
        Row("CONNECT+TLS bulk, 1 GiB", "MB/s", 1600, 290, "", None, {"pproxy": 300}),
        Row("1 KiB GET, 64 conns", "req/s", 70000, 3600, "", None, {"pproxy": 12000}),
        Row("1 KiB GET latency p99", "ms", 1.4, 9.0, "", None, {"squid": 5.0}),
        Row("CONNECT first byte p50", "ms", 0.15, 2.0, "", None, {"pproxy": 3.2}),
    ]
    assert peer_target_lines(table) == [
        "  plain HTTP bulk >= 1.0x pproxy: 1.03x PASS",
        "  CONNECT+TLS bulk >= 1.0x pproxy: 0.97x MISS",
        # no squid figure for GETs: that target is left out
        "  GET p99 <= 2x squid's: 1.80x PASS",
        "  first byte p50 below pproxy's: 0.62x PASS",
    ]
