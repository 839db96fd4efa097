"""A tiny plain-HTTP endpoint for ECS / load-balancer checks (GET /healthz) and Prometheus
(GET /metrics)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import h11
import trio

HEAD_TIMEOUT = 5.0
_NOT_HTTP_BODY = b"A Fluidity server health endpoint (GET /healthz), not its TLS port.\n"
_NOT_HTTP = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_NOT_HTTP_BODY)
) + _NOT_HTTP_BODY


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
    except h11.RemoteProtocolError:
        # Not HTTP: likely an agent whose server_port is this port. An answer in plain text
        # (not silence) tells its TLS layer this is no TLS server, and the agent says so.
        with trio.move_on_after(HEAD_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(_NOT_HTTP)
    except (trio.TooSlowError, trio.BrokenResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
