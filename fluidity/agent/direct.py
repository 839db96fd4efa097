"""Direct routes: the agent reaches a destination itself, with the server's own upstream code.

A `direct` route must behave as the tunnel does in everything but where the connection starts:
the same statuses and reasons for a refused or unreachable destination, the same header rules,
WebSocket relay, timeouts and truncation-as-reset. So the agent runs the server's stream
handler (`fluidity.server.handler`) in-process, at the far end of a link of its own over a
socket pair: the proxy opens a stream on that link exactly as on the tunnel's, and nothing
past `Proxy.open_stream` knows which one it got. The link never leaves the machine and needs
no server, so direct traffic works while the tunnel is down and never wakes a sleeping server.

Its egress policy allows every address (a direct rule is the user's own choice of destination,
typically an intranet one); its upstream code logs under ``fluidity.server.*`` names.
"""

from __future__ import annotations

import logging
import socket

import trio

from fluidity.protocol import Role, Settings, WindowPolicy
from fluidity.tunnel import Link, LinkClosed, LinkConfig, open_link, serve_link

log = logging.getLogger(__name__)

#: Every destination: the rules, not a policy, say what goes direct.
ALLOW_ALL = ("0.0.0.0/0", "::/0")
#: Before a new direct link after one failed (it only fails if the agent stalls for the
#: keepalive timeout).
RESTART_DELAY = 0.5


class DirectLink:
    """Owner of the in-process link for direct routes; run `run()` in the agent's nursery."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        idle_timeout: float,
        half_closed_timeout: float,
        max_streams: int,
        policy: WindowPolicy,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.half_closed_timeout = half_closed_timeout
        self.max_streams = max_streams
        self.policy = policy
        self.link: Link | None = None
        self._changed = trio.Event()

    def _set(self, link: Link | None) -> None:
        self.link = link
        self._changed.set()
        self._changed = trio.Event()

    async def wait_link(self) -> Link:
        """The open direct link (at once, but for the moment of a restart)."""
        while True:
            link = self.link
            if link is not None and link.is_open:
                return link
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the direct link up until cancelled; started() once the first one is."""
        # Imported here: an agent without direct rules never loads the upstream stack.
        from fluidity.server.egress import EgressPolicy
        from fluidity.server.handler import open_stream_handler

        async with open_stream_handler(
            EgressPolicy(allow=ALLOW_ALL),
            connect_timeout=self.connect_timeout,
            idle_timeout=self.idle_timeout,
            half_closed_timeout=self.half_closed_timeout,
        ) as handler:
            while True:
                near, far = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream = LinkConfig(
                    settings=Settings(peer_name="fluidity-direct", max_streams=self.max_streams),
                    policy=self.policy,
                )
                agent = LinkConfig(
                    settings=Settings(peer_name="fluidity-agent"), policy=self.policy
                )
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(serve_link, trio.SocketStream(far), handler, upstream)
                        async with open_link(trio.SocketStream(near), Role.AGENT, agent) as link:
                            self._set(link)
                            task_status.started()
                            task_status = trio.TASK_STATUS_IGNORED
                            await link.wait_closed()
                            log.error("the direct link closed (%s); starting another",
                                      link.error or "no reason")  # fmt: skip
                        nursery.cancel_scope.cancel()
                except LinkClosed as exc:
                    log.error("the direct link failed to start (%s); retrying", exc)
                finally:
                    self._set(None)
                    near.close()
                    far.close()
                await trio.sleep(RESTART_DELAY)
