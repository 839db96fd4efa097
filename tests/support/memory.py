"""What stays allocated once traffic has gone quiet (tracemalloc), for memory-bound tests."""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable, Iterable

import trio
import trio.testing


async def large_blocks_left(
    round_trips: Iterable[Callable[[], Awaitable[None]]], at_least: int = 16 * 1024
) -> list[tracemalloc.Trace]:
    """Run `round_trips` at once under tracemalloc; once they are done and every task is
    blocked again, the live allocations of `at_least` bytes or more (buffers, not objects)."""
    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            for round_trip in round_trips:
                nursery.start_soon(round_trip)
        await trio.testing.wait_all_tasks_blocked()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return [trace for trace in snapshot.traces if trace.size >= at_least]
