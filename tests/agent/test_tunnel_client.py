"""TunnelClient with the control plane: wake at start, sleep, wake on demand, give up, bad key.

A real mTLS link server on loopback plays the tunnel server; an API Gateway stand-in in front
of a scripted service plays the control plane.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from fluidity.agent.lifecycle import AuthError, Backoff, ControlPlane, ControlPlaneError, Lifecycle
from fluidity.agent.tunnel_client import TunnelClient, TunnelUnavailable
from fluidity.localcloud.apigateway import ApiGateway
from fluidity.protocol import ConnectAck, Role
from fluidity.tunnel import Link, LinkConfig, TunnelStream, open_link
from tests.support.pki import mutual_tls

KEY = "key"
SERVER_NAME = "fluidity-server"


class Service:
    """A scripted ECS service: it 'starts' `start_polls` status calls after a wake."""

    def __init__(self, port: int, start_polls: int = 2) -> None:
        self.port = port
        self.start_polls = start_polls
        self.desired = 0
        self.polls_since_wake = 0
        self.wakes = 0
        self.kills = 0

    def _ok(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"statusCode": 200, "headers": {}, "body": json.dumps(body)}

    def _state(self) -> dict[str, Any]:
        if self.desired and self.polls_since_wake >= self.start_polls:
            return {"state": "running", "desired_count": 1, "running_count": 1,
                    "address": "127.0.0.1", "port": self.port}  # fmt: skip
        return {"state": "starting" if self.desired else "stopped", "desired_count": self.desired}

    def wake(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.wakes += 1
        if not self.desired:
            self.desired, self.polls_since_wake = 1, 0
        return self._ok({"action": "waking", **self._state()})

    def status(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.polls_since_wake += 1
        return self._ok(self._state())

    def kill(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.kills += 1
        self.desired = 0
        return self._ok({"action": "killed", **self._state()})


class LinkServer:
    """Accepts mTLS links on loopback and answers every CONNECT with 200."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.links: list[Link] = []
        self.accepted = 0

    async def handler(self, stream: TunnelStream) -> None:
        await stream.send_reply(ConnectAck(stream.stream_id, 200))
        await stream.send_eof()
        while await stream.receive_some():
            pass

    async def handle(self, tcp: trio.SocketStream) -> None:
        self.accepted += 1
        tls = trio.SSLStream(tcp, self.context, server_side=True)
        async with open_link(tls, Role.SERVER, LinkConfig(), self.handler) as link:
            self.links.append(link)
            await link.wait_closed()


@asynccontextmanager
async def setup(
    start_polls: int = 2, key: str = KEY, connection_timeout: float = 10.0
) -> AsyncIterator[tuple[TunnelClient, Service, LinkServer, ApiGateway]]:
    tls = mutual_tls(server_name=SERVER_NAME)
    links = LinkServer(tls.server)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, links.handle, 0, host="127.0.0.1"))
        service = Service(listeners[0].socket.getsockname()[1], start_polls)
        api = ApiGateway(
            {("POST", "/wake"): service.wake, ("GET", "/status"): service.status,
             ("POST", "/kill"): service.kill},
            api_key=KEY,
        )  # fmt: skip
        api_port = await nursery.start(api.serve)
        control = ControlPlane(f"http://127.0.0.1:{api_port}", key, min_delay=0.01, max_delay=0.02)
        tunnel = TunnelClient(
            "192.0.2.1",  # never used: the address comes from status
            1,
            ssl_context=tls.agent,
            server_name=SERVER_NAME,
            link_config=LinkConfig(),
            lifecycle=Lifecycle(
                control, connection_timeout=connection_timeout, retry_interval=0.05
            ),
        )
        yield tunnel, service, links, api
        nursery.cancel_scope.cancel()


@pytest.fixture
def jumpable_clock() -> trio.testing.MockClock:
    """Real time (rate 1) that a test can move forward at once with `jump()`: no autojump,
    which would fire timeouts while the API Gateway's handler threads or sockets are busy."""
    return trio.testing.MockClock(rate=1.0)


async def test_wakes_at_start_then_sleeps_then_wakes_on_demand(
    jumpable_clock: trio.testing.MockClock,
) -> None:
    async with setup() as (tunnel, service, links, api), trio.open_nursery() as nursery:
        await nursery.start(tunnel.run)
        with trio.fail_after(10):
            link = await tunnel.wait_link()
        assert service.wakes == 1
        assert (tunnel.host, tunnel.port) == ("127.0.0.1", service.port)
        # The Sleep function scales to 0; ECS drains the server, which ends the link.
        service.desired = 0
        await links.links[-1].drain("scaled to 0")
        with trio.fail_after(10):
            await tunnel.wait_state("asleep")
        calls = len(api.calls)
        # A minute, 1200 retry intervals, at once: nothing happens while nobody asks.
        jumpable_clock.jump(60)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert tunnel.state == "asleep"
        assert len(api.calls) == calls
        assert service.wakes == 1
        assert links.accepted == 1
        assert not link.is_open
        # A request arrives: it waits while the agent wakes the server, then gets the link.
        with trio.fail_after(10):
            again = await tunnel.wait_link()
        assert again.is_open
        assert service.wakes == 2
        assert links.accepted == 2
        nursery.cancel_scope.cancel()


async def test_link_loss_while_running_reconnects_without_waking() -> None:
    async with setup() as (tunnel, service, links, _api), trio.open_nursery() as nursery:
        await nursery.start(tunnel.run)
        with trio.fail_after(10):
            first = await tunnel.wait_link()
        links.links[-1].close()  # a network blip: the service still runs
        with trio.fail_after(10):
            await first.wait_closed()  # the agent saw it: wait_link no longer returns it
        with trio.fail_after(10):
            await tunnel.wait_link()
        assert service.wakes == 1
        assert links.accepted == 2
        nursery.cancel_scope.cancel()


async def test_wrong_api_key_is_fatal_at_start() -> None:
    async with setup(key="wrong") as (tunnel, service, _links, _api):
        with pytest.raises(AuthError, match="api_key"):
            await tunnel.run()
    assert service.wakes == 0


async def test_server_that_never_starts_gives_up_after_connection_timeout() -> None:
    async with setup(start_polls=10**9, connection_timeout=0.5) as (tunnel, service, _l, _a):
        with trio.fail_after(10), pytest.raises(ControlPlaneError, match="did not start within"):
            await tunnel.run()
    assert service.wakes >= 1


# -- without the control plane: failures, and requests that cut the backoff short ----------


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    tls = mutual_tls(server_name=SERVER_NAME)
    return tls.server, tls.agent


async def test_a_waiting_request_cuts_a_long_backoff_short() -> None:
    server_ctx, client_ctx = _contexts()
    with trio.socket.socket() as placeholder:  # bound, not listening: connections are refused
        await placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        tunnel = TunnelClient(
            "127.0.0.1",
            port,
            ssl_context=client_ctx,
            server_name="fluidity-server",
            link_config=LinkConfig(),
            backoff=Backoff(30.0, 30.0),  # the next attempt would come in 30 s
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(tunnel.run)
            with trio.fail_after(10):
                await tunnel.wait_state("down")
            assert tunnel.failure is not None
            assert tunnel.failure.cause == "refused"
            assert not tunnel.failure.permanent
            placeholder.close()
            links = LinkServer(server_ctx)
            await nursery.start(partial(trio.serve_tcp, links.handle, port, host="127.0.0.1"))
            with trio.fail_after(5):  # well before the 30 s backoff ends
                link = await tunnel.wait_link()
            assert link.is_open
            assert tunnel.failure is None
            nursery.cancel_scope.cancel()


async def test_a_permanent_failure_fails_a_waiting_request_at_once() -> None:
    server_ctx, _ = _contexts()
    _, other_ctx = _contexts()  # trusts another CA
    links = LinkServer(server_ctx)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, links.handle, 0, host="127.0.0.1"))
        tunnel = TunnelClient(
            "127.0.0.1",
            listeners[0].socket.getsockname()[1],
            ssl_context=other_ctx,
            server_name="fluidity-server",
            link_config=LinkConfig(),
            backoff=Backoff(30.0, 30.0),
        )
        await nursery.start(tunnel.run)
        with trio.fail_after(5), pytest.raises(TunnelUnavailable, match=r"another CA.*ca_cert"):
            await tunnel.wait_link()
        assert tunnel.failure is not None
        assert tunnel.failure.cause == "server_certificate_untrusted"
        assert tunnel.failure.permanent
        nursery.cancel_scope.cancel()
