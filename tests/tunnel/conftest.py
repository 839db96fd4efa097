"""Fixtures that build a linked agent/server pair over in-memory streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from fluidity.protocol import Role
from fluidity.tunnel import Link, LinkConfig, TunnelStream, open_link

Handler = Callable[[TunnelStream], Awaitable[None]]


@asynccontextmanager
async def linked_pair(
    handler: Handler,
    agent_config: LinkConfig | None = None,
    server_config: LinkConfig | None = None,
    transports: tuple[trio.abc.Stream, trio.abc.Stream] | None = None,
) -> AsyncIterator[tuple[Link, Link]]:
    """An agent link and a server link (running `handler` per stream) joined in memory."""
    a, b = transports or trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        server_links: list[Link] = []

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            async with open_link(b, Role.SERVER, server_config, handler) as server:
                server_links.append(server)
                await server.wait_closed()

        await nursery.start(serve)
        async with open_link(a, Role.AGENT, agent_config) as agent:
            yield agent, server_links[0]
        nursery.cancel_scope.cancel()
