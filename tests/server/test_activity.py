"""ActivityTracker: open streams and the time of the last activity."""

from __future__ import annotations

import attrs
import pytest

from fluidity.server.activity import ActivitySnapshot, ActivityTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_track_counts_streams_and_stamps_open_and_close() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(clock)
    assert tracker.snapshot() == ActivitySnapshot(active=0, total=0, last_activity_epoch=1000.0)
    clock.now = 1010.0
    with tracker.track():
        assert (tracker.active, tracker.last_activity_epoch) == (1, 1010.0)
        clock.now = 1020.0
        with tracker.track():
            assert tracker.snapshot() == ActivitySnapshot(2, 2, 1020.0)
        clock.now = 1030.0
        tracker.touch()
        assert tracker.last_activity_epoch == 1030.0
        clock.now = 1040.0
    assert tracker.snapshot() == ActivitySnapshot(0, 2, 1040.0)


def test_a_failing_stream_is_still_counted_out() -> None:
    tracker = ActivityTracker(FakeClock())
    with pytest.raises(RuntimeError), tracker.track():
        raise RuntimeError("boom")
    assert tracker.active == 0


def test_snapshots_are_frozen() -> None:
    snapshot = ActivityTracker().snapshot()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snapshot.active = 3  # type: ignore[misc]
