"""An API Gateway (REST API, proxy integration) stand-in for the local cloud and tests.

It checks `x-api-key` (403 `{"message": "Forbidden"}` as API Gateway answers), applies the
usage plan's rate and burst with a token bucket (429 `{"message": "Too Many Requests"}`),
turns each request into a proxy-integration event and calls the handler in a worker thread
(handlers use blocking boto3), then maps the handler's `{statusCode, headers, body}` back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import h11
import trio

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]
#: A test hook: given (method, path), return None to proceed, or (status, body) to answer.
Fault = Callable[[str, str], "tuple[int, dict[str, Any]] | None"]

MAX_HEAD = 16 * 1024
IO_TIMEOUT = 30.0


@attrs.define
class TokenBucket:
    """API Gateway throttling: `rate` requests/s on average, bursts up to `burst`."""

    rate: float
    burst: int
    tokens: float = attrs.field(init=False)
    stamp: float = attrs.field(init=False, factory=time.monotonic)

    def __attrs_post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@attrs.define
class ApiGateway:
    """Routes `(method, path)` to Lambda handlers, as a REST API stage with an API key."""

    routes: dict[tuple[str, str], Handler]
    api_key: str
    rate: float = 10.0
    burst: int = 20
    stage: str = "local"
    fault: Fault | None = None
    #: Seconds to wait before answering (a slow integration), for tests.
    delay: float = 0.0
    calls: list[tuple[str, str, int]] = attrs.field(factory=list)
    bucket: TokenBucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.bucket = TokenBucket(self.rate, self.burst)

    def event(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """The proxy-integration event API Gateway would send for this request."""
        return {
            "resource": path,
            "path": path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": None,
            "pathParameters": None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": path,
                "httpMethod": method,
                "stage": self.stage,
                "identity": {"apiKey": headers.get("x-api-key")},
                "requestTimeEpoch": int(time.time() * 1000),
            },
            "body": body.decode() if body else None,
            "isBase64Encoded": False,
        }

    async def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """What API Gateway would answer: (status, headers, body)."""
        status, out_headers, payload = await self._answer(method, path, headers, body)
        self.calls.append((method, path, status))
        # Status is polled every second or so while a server wakes: keep it out of INFO.
        level = logging.DEBUG if (path, status) == ("/status", 200) else logging.INFO
        log.log(level, "%s %s -> %d", method, path, status)
        return status, out_headers, payload

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        handler = self.routes.get((method, path))
        if handler is None:  # API Gateway's answer for an unknown route or method
            return _json(403, {"message": "Missing Authentication Token"})
        if headers.get("x-api-key") != self.api_key:
            return _json(403, {"message": "Forbidden"})
        if not self.bucket.take():
            return _json(429, {"message": "Too Many Requests"})
        if self.fault is not None and (faulted := self.fault(method, path)) is not None:
            return _json(*faulted)
        if self.delay:
            await trio.sleep(self.delay)
        event = self.event(method, path, headers, body)
        try:
            result = await trio.to_thread.run_sync(handler, event, None)
        except Exception:
            log.exception("handler for %s %s failed", method, path)
            return _json(502, {"message": "Internal server error"})
        if not isinstance(result, dict) or "statusCode" not in result:
            return _json(502, {"message": "Internal server error"})
        out = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
        return int(result["statusCode"]), out, str(result.get("body") or "").encode()

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """Serve HTTP/1.1 requests on one connection (keep-alive) until the client is done."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                request = await _next(conn, stream)
                if not isinstance(request, h11.Request):
                    return
                body = b""
                while True:
                    event = await _next(conn, stream)
                    if isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > 1024 * 1024:
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                path = request.target.decode("ascii", "replace").split("?", 1)[0]
                headers = {n.decode().lower(): v.decode("latin-1") for n, v in request.headers}
                status, out, payload = await self.answer(
                    request.method.decode(), path, headers, body
                )
                out.setdefault("content-type", "application/json")
                out["content-length"] = str(len(payload))
                response = h11.Response(
                    status_code=status, headers=[(k.encode(), v.encode()) for k, v in out.items()]
                )
                data = b"".join(
                    conn.send(e) or b""
                    for e in (response, h11.Data(data=payload), h11.EndOfMessage())
                )
                with trio.fail_after(IO_TIMEOUT):
                    await stream.send_all(data)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.TooSlowError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; reports the bound port through task_status."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self.serve_connection, listeners)


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(IO_TIMEOUT):
            conn.receive_data(bytes(await stream.receive_some(65536)))


def _json(status: int, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json"}, json.dumps(body).encode()
