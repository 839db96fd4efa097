"""A tiny plain-HTTP endpoint for ECS / load-balancer checks (GET /healthz) and Prometheus
(GET /metrics)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import h11
import trio

HEAD_TIMEOUT = 5.0


async def serve_health(
    stream: trio.abc.Stream,
    report: Callable[[], tuple[int, dict[str, Any]]],
    metrics: Callable[[str], tuple[bytes, str]] | None = None,
) -> None:
    """Answer one request on `stream`: 200 with JSON while healthy, 503 while draining;
    /metrics with `metrics(accept)`, the exposition and its content type."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=8192)
    try:
        with trio.fail_after(HEAD_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(8192)))
                    continue
                break
        if not isinstance(event, h11.Request):
            return
        path = event.target.split(b"?")[0]
        content_type = "application/json"
        if path in {b"/healthz", b"/"} and event.method == b"GET":
            status, body = report()
            payload = json.dumps(body).encode()
        elif path == b"/metrics" and metrics is not None and event.method == b"GET":
            accept = b", ".join(v for n, v in event.headers if n == b"accept").decode("latin-1")
            status, (payload, content_type) = 200, metrics(accept)
        else:
            status, payload = 404, b'{"error": "not found"}'
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        events = [h11.Response(status_code=status, headers=headers), h11.Data(data=payload)]
        data = b"".join(conn.send(e) or b"" for e in [*events, h11.EndOfMessage()])
        with trio.fail_after(HEAD_TIMEOUT):
            await stream.send_all(data)
    except (h11.RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
