"""Rate-limited logging for events that come in bursts (failed accepts, failed logins).

A burst of a thousand alike failures is one line when it starts, one line with a count per
`interval` while it lasts, and one line with the count when it ends: enough to see what
happens and how often, without a flood that hides everything else.
"""

from __future__ import annotations

import logging

import trio


class BurstLog:
    """Logs the first of a burst of alike events, then at most one line per `interval`."""

    def __init__(self, logger: logging.Logger, level: int, interval: float = 10.0) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        #: Events not logged since the last line.
        self.suppressed = 0
        self._quiet_until = -float("inf")
        self._since = 0.0

    def record(self, message: str, *args: object) -> None:
        """One event; logged unless a line went out less than `interval` ago."""
        now = trio.current_time()
        if now < self._quiet_until:
            self.suppressed += 1
            return
        if self.suppressed:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, self.suppressed, now - self._since)
        self.logger.log(self.level, message, *args)
        self.suppressed = 0
        self._since = now
        self._quiet_until = now + self.interval

    def end(self, message: str, *args: object) -> None:
        """The burst is over: log `message` if some events went unlogged, and start afresh."""
        if self.suppressed:
            self.logger.log(self.level, message, *args)
        self.suppressed = 0
        self._quiet_until = -float("inf")
