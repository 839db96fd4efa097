"""The agent's accept loop: connections go to the handler; running out of descriptors waits,
makes room and is logged once per burst."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from fluidity.agent.app import _accept
from fluidity.agent.burst import BurstLog


class ScriptedListener(trio.abc.Listener[Any]):
    """Accepts what the script says: an exception to raise or a stream to return, then waits."""

    def __init__(self, script: list[BaseException | trio.abc.Stream]) -> None:
        self.script = script

    async def accept(self) -> Any:
        await trio.lowlevel.checkpoint()
        if not self.script:
            await trio.sleep_forever()
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_out_of_descriptors_waits_and_goes_on(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = trio.testing.memory_stream_pair()
    listener = ScriptedListener([OSError(errno.EMFILE, "Too many open files"), client])
    handled: list[tuple[object, float]] = []
    accepted = trio.Event()

    async def handler(stream: Any) -> None:
        handled.append((stream, trio.current_time()))
        accepted.set()

    scope = trio.CancelScope()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept, listener, handler, nursery, scope)
        await accepted.wait()
        scope.cancel()
    assert handled[0][0] is client
    assert handled[0][1] - start >= 0.1
    assert "accept failed" in caplog.text


async def test_other_accept_errors_are_raised() -> None:
    listener = ScriptedListener([OSError(errno.EBADF, "Bad file descriptor")])

    async def handler(stream: Any) -> None:
        raise AssertionError("nothing was accepted")

    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError, match="Bad file descriptor"):
            await _accept(listener, handler, nursery, trio.CancelScope())


async def test_a_burst_of_failures_is_logged_once_and_makes_room(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of descriptors 50 times in a row: every retry closes the oldest idle connection,
    the log gets one line for the start and one with the count when accept works again."""
    client, _ = trio.testing.memory_stream_pair()
    emfile = OSError(errno.EMFILE, "Too many open files")
    listener = ScriptedListener([*([emfile] * 50), client])
    accepted = trio.Event()
    made_room: list[float] = []

    async def handler(stream: Any) -> None:
        accepted.set()

    def make_room() -> bool:
        made_room.append(trio.current_time())
        return len(made_room) % 2 == 0

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept, listener, handler, nursery, scope, make_room)
        await accepted.wait()
        scope.cancel()
    assert len(made_room) == 50
    lines = [r.getMessage() for r in caplog.records]
    assert sum("accept failed" in line for line in lines) == 1, lines
    assert "no idle one to close" in lines[0]
    assert lines[-1] == "accept works again after 50 failures in 5.0 s"


async def test_burst_log_counts_what_it_does_not_log(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    burst = BurstLog(logging.getLogger("test.burst"), logging.WARNING, interval=10.0)
    for _ in range(5):
        burst.record("failed for %s", "alice")
        await trio.sleep(1)
    await trio.sleep(10)
    burst.record("failed for %s", "bob")
    burst.record("failed for %s", "carol")
    burst.end("over")
    assert [r.getMessage() for r in caplog.records] == [
        "failed for alice",
        "failed for bob (4 more like it in the last 15 s)",
        "over",
    ]
