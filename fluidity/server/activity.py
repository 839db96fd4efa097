"""How busy the server is: open proxied streams and when anything last happened.

The server exists only while it is used; whoever decides to stop it (metrics, idle shutdown)
reads `snapshot()`, and Prometheus reads the same numbers (`prom`). Keepalive pings on an
idle link must not count as use, so only the stream handlers report here: a stream opened or
closed, bytes moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs


@attrs.frozen
class ActivitySnapshot:
    #: Proxied streams (client connections) open now.
    active: int
    #: Streams opened since the tracker was created.
    total: int
    #: Wall-clock seconds (time.time()) of the last stream opened/closed or byte moved.
    last_activity_epoch: float


class ActivityTracker:
    """Counts open streams and stamps activity. Cheap enough to call per chunk."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.active = 0
        self.total = 0
        self.last_activity_epoch = clock()

    def touch(self) -> None:
        """Something moved: a byte, a message, a stream state change."""
        self.last_activity_epoch = self._clock()

    def opened(self) -> None:
        """A stream opened; pair with `closed()` (or use `track()`)."""
        self.active += 1
        self.total += 1
        self.last_activity_epoch = self._clock()

    def closed(self) -> None:
        self.active -= 1
        self.last_activity_epoch = self._clock()

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one open stream for the duration of the block."""
        self.opened()
        try:
            yield
        finally:
            self.closed()

    def snapshot(self) -> ActivitySnapshot:
        return ActivitySnapshot(self.active, self.total, self.last_activity_epoch)
