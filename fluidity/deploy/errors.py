"""The deploy tool's errors (tree in the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence


class DeployError(Exception):
    """A deployment step failed; the message is for the person at the terminal."""


class StackFailed(DeployError):
    """A stack operation ended in a failed state; `events` are the failures that explain it."""

    def __init__(self, message: str, events: Sequence[str] = ()) -> None:
        self.events = list(events)
        details = "".join(f"\n  {line}" for line in self.events)
        super().__init__(message + (f"\nStack events that explain it:{details}" if details else ""))


class Aborted(DeployError):
    """The user answered no; nothing was changed by the declined step."""
