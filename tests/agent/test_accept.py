"""The agent's accept loop: connections go to the handler; running out of descriptors waits."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from fluidity.agent.app import _accept


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
