"""Request streams: one HTTP exchange with the origin through a shared httpx2 client.

The client is set up to behave as a proxy, not as a browser: it follows no redirect, keeps no
cookie, adds no header of its own, decodes nothing, ignores the environment, and reaches the
network only through `origin_pool.OriginPool`, which opens every connection with
`egress.open_tcp`. Bodies stream both ways under the tunnel's flow control;
nothing holds a whole body.

Failures before the response head become a short text/plain answer (403/502/504, reason in
`X-Fluidity-Error`); after it the stream is reset with UPSTREAM_ERROR, as the head is gone.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx2
import trio

from fluidity.protocol import ErrorCode, Request, Response
from fluidity.tunnel import LinkClosed, StreamReset, TunnelStream

from .activity import ActivityTracker
from .egress import EgressPolicy, UpstreamError
from .origin_pool import CLOSE_TIMEOUT, OriginPool

log = logging.getLogger(__name__)

#: After the reply is complete, how long to read (and discard) what is left of the request body.
DRAIN_TIMEOUT = 10.0
READ_SIZE = 64 * 1024


# -- the shared client ------------------------------------------------------------------------


class _DiscardingCookieJar(http.cookiejar.CookieJar):
    """A proxy keeps no cookies: what one client's origin sets must not reach another request."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass  # nothing would be kept: skip parsing Set-Cookie on every response


class _RedactQuery(logging.Filter):
    """httpx2 logs every request URL at INFO; query strings may hold secrets, so drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        url = args[1] if isinstance(args, tuple) and len(args) > 1 else None
        if isinstance(url, httpx2.URL) and url.query and isinstance(args, tuple):
            record.args = (args[0], url.copy_with(query=None), *args[2:])
        return True


def _redact_httpx_logs() -> None:
    logger = logging.getLogger("httpx2")
    if not any(isinstance(f, _RedactQuery) for f in logger.filters):
        logger.addFilter(_RedactQuery())


def make_client(
    policy: EgressPolicy,
    connect_timeout: float,
    read_timeout: float,
    *,
    verify: ssl.SSLContext | None = None,
) -> httpx2.AsyncClient:
    """The shared upstream client: a proxy's client, not a browser's (see the module doc).

    `verify` is the TLS context for https origins; by default the system CA store.
    """
    _redact_httpx_logs()
    transport = OriginPool(policy, connect_timeout, verify or ssl.create_default_context())
    client = httpx2.AsyncClient(
        transport=transport,
        follow_redirects=False,
        cookies=_DiscardingCookieJar(),
        trust_env=False,
        timeout=httpx2.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
    )
    # The client starts with User-Agent, Accept, Accept-Encoding and Connection defaults.
    for name in list(client.headers.keys()):
        del client.headers[name]
    return client


# -- serving one Request stream -----------------------------------------------------------------

#: Auth that does nothing: httpx2 would otherwise turn user:pass@ in the URL into Basic auth.
_NO_AUTH = httpx2.Auth()


class _TunnelBody(httpx2.AsyncByteStream):
    """The request body as it arrives from the tunnel."""

    def __init__(self, stream: TunnelStream, first: bytes, activity: ActivityTracker) -> None:
        self._stream = stream
        self._first = first
        self._activity = activity

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._first:
            first, self._first = self._first, b""
            yield first
        while data := await self._stream.receive_some(READ_SIZE):
            self._activity.touch()
            yield data


def _origin_form(url: bytes) -> bytes | None:
    """The request target exactly as the agent wrote it, or None if it is not safe to send.

    httpx2 would normalize the path (dot segments, escapes); a proxy passes it on unchanged.
    """
    _, sep, rest = url.partition(b"://")
    if not sep:
        return None
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    target = rest[cut:].split(b"#", 1)[0]
    if not target.startswith(b"/"):
        target = b"/" + target
    if any(b <= 0x20 or b >= 0x7F for b in target):
        return None
    return target


def _header_names(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    return {name.lower() for name, _ in headers}


def _label(stream: TunnelStream, head: Request) -> str:
    """`stream N METHOD scheme://host[:port]`: what may be logged at INFO (no path, query or
    credentials), taken from the URL as the agent sent it."""
    scheme, _, rest = head.url.partition(b"://")
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].rpartition(b"@")[2]
    method = head.method.decode("ascii", "replace")
    where = (scheme + b"://" + authority).decode("ascii", "replace")
    return f"stream {stream.stream_id} {method} {where}"


async def _build_request(
    stream: TunnelStream, head: Request, activity: ActivityTracker
) -> httpx2.Request:
    try:
        url = httpx2.URL(head.url.decode("utf-8"))
    except (UnicodeDecodeError, httpx2.InvalidURL):
        raise UpstreamError(400, "the request URL is not valid") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise UpstreamError(400, "the request URL must be absolute http:// or https://")
    headers = list(head.headers)
    names = _header_names(headers)
    if b"host" not in names:
        headers.insert(0, (b"Host", url.netloc))
    first = b""
    if not head.end_stream and not names & {b"content-length", b"transfer-encoding"}:
        # A body of unknown length needs chunked framing, but only if there is a body.
        first = await stream.receive_some(READ_SIZE)
        if first:
            activity.touch()
            headers.append((b"Transfer-Encoding", b"chunked"))
    extensions: dict[str, Any] = {}
    target = _origin_form(head.url)
    if target is not None:
        extensions["target"] = target
    return httpx2.Request(
        head.method.decode("ascii", "replace"),
        url,
        headers=headers,
        stream=_TunnelBody(stream, first, activity),
        extensions=extensions,
    )


def _translate(exc: httpx2.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamError(504, f"the origin timed out: {exc}")
    return UpstreamError(502, f"the origin failed: {exc}" if str(exc) else "the origin failed")


def _header_value(text: str) -> bytes:
    return " ".join(text.split()).encode("ascii", "replace")[:512]


async def _answer_error(stream: TunnelStream, error: UpstreamError) -> None:
    body = error.reason.encode("utf-8", "replace") + b"\n"
    headers = (
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"x-fluidity-error", _header_value(error.reason)),
    )
    await stream.send_reply(Response(stream.stream_id, error.status, b"", headers))
    await stream.send_all(body)
    await stream.send_eof()


async def _drain(stream: TunnelStream) -> None:
    """Read and drop what is left of the request body once the reply is complete.

    A handler that returns before the agent ended its side has its stream reset, which the
    agent sees while still sending (and, in older links, could overtake the queued reply).
    Reading the rest lets the stream end cleanly; the agent may also just reset it.
    """
    try:
        # Usually the body ended long ago (a GET has none): no need to wait or set a timer.
        while (data := stream.receive_nowait()) is not None:
            if not data:
                return
        with trio.move_on_after(DRAIN_TIMEOUT):
            while await stream.receive_some(READ_SIZE):
                pass
    except (StreamReset, LinkClosed):
        pass


async def serve_request(
    stream: TunnelStream, client: httpx2.AsyncClient, activity: ActivityTracker
) -> None:
    """Make the stream's request upstream and stream the response back."""
    head = stream.head
    assert isinstance(head, Request)
    try:
        request = await _build_request(stream, head, activity)
        response = await client.send(request, stream=True, auth=_NO_AUTH, follow_redirects=False)
    except (UpstreamError, httpx2.HTTPError) as exc:
        error = exc if isinstance(exc, UpstreamError) else _translate(exc)
        log.info("%s: %d %s", _label(stream, head), error.status, error.reason)
        await _answer_error(stream, error)
        await _drain(stream)
        return
    try:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %d", _label(stream, head), response.status_code)
        reason = response.extensions.get("reason_phrase", b"")
        await stream.send_reply(
            Response(
                stream.stream_id,
                response.status_code,
                reason if isinstance(reason, bytes) else b"",
                tuple(response.headers.raw),
            )
        )
        try:
            async with contextlib.aclosing(response.aiter_raw()) as chunks:
                async for chunk in chunks:
                    activity.touch()
                    await stream.send_all(chunk)
        except httpx2.HTTPError as exc:
            error = _translate(exc)
            log.info("%s: response body failed: %s", _label(stream, head), error.reason)
            stream.reset(ErrorCode.UPSTREAM_ERROR, error.reason)
            return
        await stream.send_eof()
    finally:
        if not response.is_closed:  # read to the end, it closed itself
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await response.aclose()
    await _drain(stream)
