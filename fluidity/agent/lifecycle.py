"""The agent's side of the control plane: wake, status and kill over the API (x-api-key).

Transient failures (network errors, 429 throttling, 5xx) are retried with backoff; a refused
key (401/403) is fatal with a message that says so. `wait_until_up` polls status and reports
progress a person can follow while Fargate starts the task. `Lifecycle` is how the tunnel
client uses all this: whether to wake the server, and how long to wait for it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import attrs
import httpx2
import trio

log = logging.getLogger(__name__)

#: Per-call bound; API Gateway's own integration limit is 29 s.
CALL_TIMEOUT = 30.0


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter above a floor: attempt n waits a random time between
    `minimum` and minimum x 2^n, capped at `maximum` (not "full jitter", which starts at 0:
    a floor keeps a flapping server from being hit at once)."""

    minimum: float = 0.5
    maximum: float = 30.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.minimum * 2 ** max(0, attempt))
        return random.uniform(self.minimum, max(self.minimum, ceiling))


class ControlPlaneError(Exception):
    """The control plane refused us or kept failing; the message says what to do."""


class AuthError(ControlPlaneError):
    """The API key was refused (401/403): retrying cannot help."""


@attrs.frozen
class ServerStatus:
    """The service as the Status/Wake/Kill functions describe it (docs/control-plane.md)."""

    state: str
    desired_count: int = 0
    running_count: int = 0
    pending_count: int = 0
    address: str | None = None
    port: int | None = None
    task_status: str | None = None
    estimated_seconds: int | None = None
    action: str | None = None

    @classmethod
    def from_json(cls, body: Any) -> ServerStatus:
        if not isinstance(body, dict) or not isinstance(body.get("state"), str):
            raise ControlPlaneError(f"unexpected answer from the control plane: {body!r:.200}")
        known = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in known})

    @property
    def is_down(self) -> bool:
        return self.state in {"stopped", "stopping"}


class ControlPlane:
    """Client of the control-plane API: `POST /wake`, `GET /status`, `POST /kill`."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        attempts: int = 6,
        min_delay: float = 0.5,
        max_delay: float = 10.0,
        call_timeout: float = CALL_TIMEOUT,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._key = api_key
        self.attempts = attempts
        self._backoff = Backoff(min_delay, max_delay)
        self.call_timeout = call_timeout
        self._transport = transport

    def _client(self) -> httpx2.AsyncClient:
        # trust_env=False: the user's HTTP(S)_PROXY may well point at this agent itself.
        return httpx2.AsyncClient(
            trust_env=False,
            timeout=self.call_timeout,
            headers={"x-api-key": self._key},
            transport=self._transport,
        )

    async def call(self, method: str, path: str) -> ServerStatus:
        """One API call with retries for what is worth retrying."""
        url = f"{self.api_url}{path}"
        last = ""
        async with self._client() as client:
            for attempt in range(self.attempts):
                if attempt:
                    delay = self._backoff.delay(attempt)
                    log.info("%s %s failed (%s); retrying in %.1f s", method, path, last, delay)
                    await trio.sleep(delay)
                try:
                    with trio.fail_after(self.call_timeout + 5):
                        response = await client.request(method, url)
                except (httpx2.TransportError, trio.TooSlowError) as exc:
                    last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    continue
                if response.status_code in {401, 403}:
                    raise AuthError(
                        f"the control plane refused the API key ({response.status_code} from "
                        f"{method} {path}): check api_key (FLUIDITY_API_KEY / --api-key)"
                    )
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    continue
                if response.status_code >= 400:
                    raise ControlPlaneError(
                        f"{method} {path} answered {response.status_code}: {response.text[:200]}"
                    )
                try:
                    return ServerStatus.from_json(response.json())
                except ValueError:
                    raise ControlPlaneError(f"{method} {path} did not answer JSON") from None
        raise ControlPlaneError(f"{method} {path} kept failing after {self.attempts} tries: {last}")

    async def wake(self) -> ServerStatus:
        return await self.call("POST", "/wake")

    async def status(self) -> ServerStatus:
        return await self.call("GET", "/status")

    async def kill(self) -> ServerStatus:
        return await self.call("POST", "/kill")

    async def wait_until_up(
        self,
        poll_interval: float,
        started: float,
        progress: Callable[[ServerStatus], None] = lambda status: None,
    ) -> ServerStatus:
        """Poll status until the server runs and has an address; log progress meanwhile and
        hand each status to `progress` (the agent's /healthz shows it).

        Bound it at the call site (connection_timeout).
        """
        while True:
            status = await self.status()
            progress(status)
            if status.state == "running" and status.address:
                return status
            waited = trio.current_time() - started
            hint = f", about {status.estimated_seconds} s left" if status.estimated_seconds else ""
            task = f", task {status.task_status}" if status.task_status else ""
            log.info("waking server... %.0f s%s%s", waited, task, hint)
            if status.is_down and status.desired_count == 0:
                # Someone (the Sleep or Kill function) stopped it meanwhile: ask again.
                await self.wake()
            await trio.sleep(poll_interval)


@attrs.frozen
class Lifecycle:
    """How the tunnel client uses the control plane (disabled when the agent has no api_url)."""

    control: ControlPlane
    connection_timeout: float = 300.0
    retry_interval: float = 5.0
