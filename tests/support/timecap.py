"""A time cap on every trio test, on the test's own clock, that names where a hang waited.

`capped(test, seconds)` wraps a trio test function: a watchdog (a system task, so the test's
own exceptions stay unwrapped) waits `seconds` on the run's clock; if the test is still
running then, it records where every task is waiting, cancels the test (its fixtures then
tear down as usual) and fails it with that report. Under a `MockClock` whose time moves only
by jumps (rate 0: `autojump_clock` and friends), the cap is VIRTUAL_CAP virtual seconds
instead: such a test that hangs jumps straight to it and fails at once, while tests that wait
out long virtual timeouts still fit.

tests/conftest.py applies it to every trio test; pytest-timeout stays the backstop for what a
cancellation cannot reach (synchronous tests, a shielded wait, a thread).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

#: The cap, in virtual seconds, of a test whose clock only moves by jumps.
VIRTUAL_CAP = 3600.0
#: Longest hang report; a test with thousands of tasks shows the first of them.
_MAX_LINES = 300
_REPO = str(Path(__file__).resolve().parents[2])
_TRIO_CORE = str(Path(trio.__file__).parent / "_core")

TestFunction = Callable[..., Awaitable[None]]


def capped(
    test: TestFunction,
    seconds: float,
    *,
    stuck: Callable[[str], None] | None = None,
    grace: float = 10.0,
) -> TestFunction:
    """`test` failing with a report of every task's wait once `seconds` have passed.

    If the cancelled test is still running `grace` seconds later (a shielded wait, a worker
    thread), `stuck` gets the report at once: the backstop that ends it may not show it.
    """

    @functools.wraps(test)
    async def run_capped(**kwargs: object) -> None:
        clock = trio.lowlevel.current_clock()
        virtual = isinstance(clock, trio.testing.MockClock) and clock.rate == 0
        cap = VIRTUAL_CAP if virtual else seconds
        report: list[str] = []
        done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                watch = functools.partial(_watch, cap, scope, done, report, stuck, grace)
                trio.lowlevel.spawn_system_task(watch)
                try:
                    await test(**kwargs)
                finally:
                    done.set()
        except BaseException as exc:
            if report:
                raise _hung(cap, virtual, report[0]) from exc
            raise
        if report:
            raise _hung(cap, virtual, report[0])

    return run_capped


async def _watch(
    cap: float,
    scope: trio.CancelScope,
    done: trio.Event,
    report: list[str],
    stuck: Callable[[str], None] | None,
    grace: float,
) -> None:
    with trio.move_on_after(cap):
        await done.wait()
        return
    report.append(task_tree())
    scope.cancel()
    with trio.move_on_after(grace):
        await done.wait()
        return
    if stuck is not None:
        stuck(f"still running {grace:g} s after its time cap cancelled it:\n{task_tree()}")


def _hung(cap: float, virtual: bool, tree: str) -> BaseException:
    unit = "virtual seconds (MockClock)" if virtual else "s"
    message = (
        f"the test was still running after its {cap:g} {unit} time cap and was cancelled; "
        f"where each task was waiting:\n{tree}"
    )
    return pytest.fail.Exception(message, pytrace=False)


def task_tree() -> str:
    """The test's tasks, indented by nursery, each with the frames it waits in: this
    repository's, and the innermost outside trio's core (`Event.wait`, `sleep`, ...)."""
    lines: list[str] = []
    me = trio.lowlevel.current_task()

    def visit(task: trio.lowlevel.Task, depth: int) -> None:
        if task is me or task.name.startswith("<TrioToken"):
            return
        indent = "  " * depth
        lines.append(f"{indent}{task.name}")
        frames = [(f.f_code.co_filename, n, f.f_code.co_name) for f, n in task.iter_await_frames()]
        outside_core = [i for i, (path, _, _) in enumerate(frames) if _TRIO_CORE not in path]
        innermost = outside_core[-1] if outside_core else -1
        for index, (path, lineno, name) in enumerate(frames):
            ours = path.startswith(_REPO) and "site-packages" not in path
            if ours or index == innermost:
                shown = path[len(_REPO) + 1 :] if path.startswith(_REPO) else path
                lines.append(f"{indent}    {shown}:{lineno} in {name}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                visit(child, depth + 1)

    root = trio.lowlevel.current_root_task()
    if root is not None:
        visit(root, 0)
    if len(lines) > _MAX_LINES:
        lines[_MAX_LINES:] = [f"... and {len(lines) - _MAX_LINES} more lines"]
    return "\n".join(lines)
