"""The agent's control-plane client against a real local API Gateway stand-in over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from fluidity.agent.lifecycle import AuthError, ControlPlane, ControlPlaneError, ServerStatus
from fluidity.localcloud.apigateway import ApiGateway

KEY = "test-key-123"


class FakeService:
    """A service whose status the handlers report; enough to exercise the client's logic."""

    def __init__(self) -> None:
        self.desired = 0
        self.polls = 0
        self.events: list[dict[str, Any]] = []

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"statusCode": 200, "headers": {}, "body": json.dumps(body)}

    def wake(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        action = "waking" if self.desired == 0 else "starting"
        self.desired = 1
        return self._answer({"action": action, "state": "starting", "desired_count": 1})

    def status(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.polls += 1
        if self.desired and self.polls >= 3:
            return self._answer(
                {"state": "running", "desired_count": 1, "running_count": 1,
                 "address": "127.0.0.1", "task_status": "RUNNING"}
            )  # fmt: skip
        state = "starting" if self.desired else "stopped"
        return self._answer(
            {"state": state, "desired_count": self.desired, "task_status": "PROVISIONING",
             "estimated_seconds": 30}
        )  # fmt: skip

    def kill(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.desired = 0
        return self._answer({"action": "killed", "state": "stopping"})


@asynccontextmanager
async def gateway(service: FakeService, **options: Any) -> AsyncIterator[tuple[ApiGateway, str]]:
    api = ApiGateway(
        {("POST", "/wake"): service.wake, ("GET", "/status"): service.status,
         ("POST", "/kill"): service.kill},
        api_key=KEY,
        **options,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        port = await nursery.start(api.serve)
        yield api, f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def control(url: str, key: str = KEY, **kw: Any) -> ControlPlane:
    return ControlPlane(url, key, min_delay=0.01, max_delay=0.05, **kw)


async def test_wake_status_kill_round_trip() -> None:
    service = FakeService()
    async with gateway(service) as (api, url):
        woke = await control(url).wake()
        up = await control(url).wait_until_up(0.01, trio.current_time())
        killed = await control(url).kill()
    assert woke == ServerStatus(state="starting", desired_count=1, action="waking")
    assert (up.state, up.address) == ("running", "127.0.0.1")
    assert killed.action == "killed"
    assert service.events[0]["headers"]["x-api-key"] == KEY
    assert service.events[0]["httpMethod"] == "POST"
    assert [c[1] for c in api.calls].count("/status") == 3


async def test_wrong_key_is_fatal_with_a_clear_message() -> None:
    async with gateway(FakeService()) as (api, url):
        with pytest.raises(AuthError, match=r"refused the API key \(403"):
            await control(url, key="wrong").wake()
    assert api.calls == [("POST", "/wake", 403)], "no retries for a refused key"


async def test_throttling_is_retried() -> None:
    service = FakeService()
    async with gateway(service, rate=0.0001, burst=1) as (api, url):
        api.bucket.tokens = 0  # the next call is throttled, then tokens trickle back
        with pytest.raises(ControlPlaneError, match="HTTP 429"):
            await control(url, attempts=3).wake()
        api.bucket.rate = 1000.0
        status = await control(url).wake()
    assert status.action == "waking"
    assert [c[2] for c in api.calls][:3] == [429, 429, 429]


async def test_server_errors_are_retried_then_succeed() -> None:
    failures = iter([(503, {"message": "Service Unavailable"}), (500, {"message": "boom"})])

    def fault(method: str, path: str) -> tuple[int, dict[str, Any]] | None:
        return next(failures, None)

    service = FakeService()
    async with gateway(service, fault=fault) as (api, url):
        status = await control(url).wake()
    assert status.action == "waking"
    assert [c[2] for c in api.calls] == [503, 500, 200]


async def test_slow_answers_time_out_and_are_retried() -> None:
    service = FakeService()
    async with gateway(service, delay=1.0) as (_api, url):
        with pytest.raises(ControlPlaneError, match="kept failing after 2 tries"):
            await control(url, attempts=2, call_timeout=0.2).wake()


async def test_unreachable_control_plane() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ControlPlaneError, match="kept failing"):
        await control(f"http://127.0.0.1:{port}", attempts=2).status()


async def test_wait_until_up_wakes_again_if_stopped_meanwhile() -> None:
    service = FakeService()
    async with gateway(service) as (api, url):
        plane = control(url)
        await plane.wake()
        service.desired = 0  # the Kill function ran in between
        with trio.fail_after(10):
            up = await plane.wait_until_up(0.01, trio.current_time())
    assert up.state == "running"
    assert [c[1] for c in api.calls].count("/wake") == 2
