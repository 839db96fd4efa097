"""Request streams: one HTTP exchange with the origin through a shared httpx2 client.

The client is set up to behave as a proxy, not as a browser: it follows no redirect, keeps no
cookie, adds no header of its own, decodes nothing, ignores the environment, and reaches the
network only through `origin_pool.OriginPool`, which opens every connection with
`egress.open_tcp`. Bodies stream both ways under the tunnel's flow control;
nothing holds a whole body.

Failures before the response head become a short text/plain answer (403/502/504, the why in
`X-Fluidity-Error`, a token for scripts in `X-Fluidity-Reason`); after it the stream is reset
with UPSTREAM_ERROR, as the head is gone. A response head too large for one tunnel frame is
such a failure (502): the pool refuses one above MAX_HEAD while reading, and a head that fits
the wire but not the frame is caught as FrameTooLarge, which sends nothing.
"""

from __future__ import annotations

import functools
import http.cookiejar
import logging
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx2
import trio

from fluidity.httputil import ERROR_HEADER, REASON_HEADER, header_text, upstream_reason
from fluidity.protocol import ErrorCode, Request, Response
from fluidity.tunnel import FrameTooLarge, LinkClosed, StreamReset, TunnelStream

from .activity import ActivityTracker
from .egress import EgressPolicy, UpstreamError
from .origin_pool import BODY_EXTENSION, CLOSE_TIMEOUT, OriginPool

log = logging.getLogger(__name__)

#: After the reply is complete, how long to read (and discard) what is left of the request body.
DRAIN_TIMEOUT = 10.0
READ_SIZE = 64 * 1024
#: Parsed origins (`scheme://authority`) kept for reuse.
ORIGIN_URLS = 256


# -- the shared client ------------------------------------------------------------------------


class _DiscardingCookieJar(http.cookiejar.CookieJar):
    """A proxy keeps no cookies: what one client's origin sets must not reach another request."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass  # nothing would be kept: skip parsing Set-Cookie on every response


class _RedactQuery(logging.Filter):
    """httpx2 logs every request URL at INFO; query strings and user info may hold secrets,
    so drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        url = args[1] if isinstance(args, tuple) and len(args) > 1 else None
        if isinstance(url, httpx2.URL) and (url.query or url.userinfo) and isinstance(args, tuple):
            record.args = (args[0], url.copy_with(query=None, userinfo=b""), *args[2:])
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
    pool: OriginPool | None = None,
) -> httpx2.AsyncClient:
    """The shared upstream client: a proxy's client, not a browser's (see the module doc).

    `verify` is the TLS context for https origins; by default the system CA store. `pool` is
    the transport, if the caller made it (to run its `close_expired`).
    """
    _redact_httpx_logs()
    if pool is None:
        pool = OriginPool(policy, connect_timeout, verify or ssl.create_default_context())
    client = httpx2.AsyncClient(
        transport=pool,
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


class _NoAuthFlow(AsyncGenerator[httpx2.Request, httpx2.Response]):
    """`httpx2.Auth`'s flow without its two generators: the request once, then done."""

    __slots__ = ("_request",)

    def __init__(self, request: httpx2.Request) -> None:
        self._request: httpx2.Request | None = request

    async def asend(self, value: httpx2.Response | None = None) -> httpx2.Request:
        request, self._request = self._request, None
        if request is None:
            raise StopAsyncIteration
        return request

    __anext__ = asend

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> httpx2.Request:
        self._request = None  # as a finished generator would: raise what was thrown in
        raise typ if val is None else val

    async def aclose(self) -> None:
        self._request = None


class _NoAuth(httpx2.Auth):
    """Auth that does nothing: httpx2 would otherwise turn user:pass@ in the URL into Basic
    auth. (A plain `httpx2.Auth()` does the same through two generators per request.)"""

    def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        return _NoAuthFlow(request)


_NO_AUTH = _NoAuth()


class _TunnelBody(httpx2.AsyncByteStream):
    """The request body as it arrives from the tunnel: `first`, then what `stream` has left
    (None: nothing). An iterator, not a generator: nothing to close if the exchange stops
    reading it early."""

    __slots__ = ("_activity", "_first", "_stream")

    def __init__(
        self, stream: TunnelStream | None, first: bytes, activity: ActivityTracker
    ) -> None:
        self._stream = stream
        self._first = first
        self._activity = activity

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        stream = self._stream
        if stream is not None:
            data = await stream.receive_some(READ_SIZE)
            if data:
                self._activity.touch()
                return data
            self._stream = None
        raise StopAsyncIteration


#: After the scheme: the authority runs to the first "/" or "?", the target from there to "#".
_TARGET = re.compile(rb"[^/?]*+([^#]*)")
#: What a request target may hold: printable ASCII, no space.
_PRINTABLE = bytes(range(0x21, 0x7F))


def _split(url: bytes) -> tuple[bytes, bytes] | None:
    """`scheme://authority` and the request target exactly as the agent wrote them, or None
    if the URL has no scheme or its target is not safe to send as it is.

    httpx2 would normalize the path (dot segments, escapes); a proxy passes it on unchanged.
    """
    start = url.find(b"://")
    if start < 0:
        return None
    match = _TARGET.match(url, start + 3)
    assert match is not None  # both parts may be empty
    target = match[1]
    if target.translate(None, _PRINTABLE):
        return None
    if not target.startswith(b"/"):
        target = b"/" + target
    return url[: match.start(1)], target


@functools.lru_cache(maxsize=ORIGIN_URLS)
def _origin_url(origin: str) -> httpx2.URL:
    """The parsed `scheme://authority`: a proxy's requests keep going to the same few
    origins, and parsing and checking the host each time costs more than the rest of the
    request's setup. httpx2.URL is immutable, so one object serves every request."""
    return httpx2.URL(origin)


def _request_url(raw: bytes) -> tuple[httpx2.URL, bytes | None]:
    """The URL to hand httpx2, and the target to send (None: let httpx2 encode the path).

    A target we send as it is travels in the request's "target" extension, so the URL needs
    only the origin; credentials in it are never cached.
    """
    parts = _split(raw)
    if parts is None:
        return httpx2.URL(raw.decode("utf-8")), None
    origin, target = parts
    if b"@" in origin:
        return httpx2.URL(origin.decode("utf-8")), target
    return _origin_url(origin.decode("utf-8")), target


def _label(stream: TunnelStream, head: Request) -> str:
    """`stream N METHOD scheme://host[:port]`: what may be logged at INFO (no path, query or
    credentials), taken from the URL as the agent sent it."""
    scheme, _, rest = head.url.partition(b"://")
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].rpartition(b"@")[2]
    method = head.method.decode("ascii", "replace")
    where = (scheme + b"://" + authority).decode("ascii", "replace")
    return f"stream {stream.stream_id} {method} {where}"


async def _build_request(
    stream: TunnelStream, head: Request, activity: ActivityTracker, timeouts: httpx2.Timeout
) -> httpx2.Request:
    try:
        url, target = _request_url(head.url)
    except (UnicodeDecodeError, httpx2.InvalidURL):
        raise UpstreamError(400, "the request URL is not valid") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise UpstreamError(400, "the request URL must be absolute http:// or https://")
    headers = list(head.headers)
    names = {name.lower() for name, _ in headers}
    if b"host" not in names:
        headers.insert(0, (b"Host", url.netloc))
    first = b""
    more = not head.end_stream
    if more and b"content-length" not in names and b"transfer-encoding" not in names:
        # A body of unknown length needs chunked framing, but only if there is a body.
        first = await stream.receive_some(READ_SIZE)
        if first:
            activity.touch()
            headers.append((b"Transfer-Encoding", b"chunked"))
        else:
            more = False
    # The client's timeouts, as client.send would set them (but without copying them twice).
    extensions: dict[str, Any] = {"timeout": timeouts.as_dict()}
    if target is not None:
        extensions["target"] = target
    return httpx2.Request(
        head.method.decode("ascii", "replace"),
        url,
        headers=headers,
        stream=_TunnelBody(stream if more else None, first, activity),
        extensions=extensions,
    )


def _translate(exc: httpx2.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamError(504, f"the origin timed out: {exc}")
    if isinstance(exc, httpx2.LocalProtocolError):  # the client's request (see request_error)
        return UpstreamError(400, str(exc))
    return UpstreamError(502, f"the origin failed: {exc}" if str(exc) else "the origin failed")


async def _answer_error(stream: TunnelStream, error: UpstreamError) -> None:
    body = error.reason.encode("utf-8", "replace") + b"\n"
    headers = (
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (REASON_HEADER, upstream_reason(error.status)),
        (ERROR_HEADER, header_text(error.reason)),
    )
    phrase = HTTPStatus(error.status).phrase.encode()
    await stream.send_reply(Response(stream.stream_id, error.status, phrase, headers))
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
        request = await _build_request(stream, head, activity, client.timeout)
        response = await client.send(request, stream=True, auth=_NO_AUTH, follow_redirects=False)
    except (UpstreamError, httpx2.HTTPError) as exc:
        error = exc if isinstance(exc, UpstreamError) else _translate(exc)
        log.info("%s: %d %s", _label(stream, head), error.status, error.reason)
        await _answer_error(stream, error)
        await _drain(stream)
        return
    finished = False
    try:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %d", _label(stream, head), response.status_code)
        reason = response.extensions.get("reason_phrase", b"")
        try:
            await stream.send_reply(
                Response(
                    stream.stream_id,
                    response.status_code,
                    reason if isinstance(reason, bytes) else b"",
                    tuple(response.headers.raw),
                )
            )
        except FrameTooLarge as exc:
            # Nothing was sent: the stream is still unanswered, and the link is fine. The
            # response (and its connection) is closed below.
            error = UpstreamError(
                502,
                f"the origin's response head is too large for the tunnel "
                f"({exc.size} bytes encoded, at most {exc.limit})",
            )
            log.info("%s: %d %s", _label(stream, head), error.status, error.reason)
            await _answer_error(stream, error)
        else:
            # The pool's body stream itself: aiter_raw() would add two generators per chunk.
            chunks: AsyncIterator[bytes] = response.extensions[BODY_EXTENSION]
            try:
                async for chunk in chunks:
                    activity.touch()
                    await stream.send_all(chunk)
            except httpx2.HTTPError as exc:
                error = _translate(exc)
                log.info("%s: response body failed: %s", _label(stream, head), error.reason)
                stream.reset(ErrorCode.UPSTREAM_ERROR, error.reason)
                return
            # Read to the end, the body released its connection: closing the response now
            # would only note the time.
            finished = True
            await stream.send_eof()
    finally:
        if not finished:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await response.aclose()
    await _drain(stream)
