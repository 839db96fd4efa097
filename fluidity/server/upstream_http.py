"""Request streams: one HTTP exchange with the origin through the shared `OriginPool`.

The pool is a proxy's client, not a browser's: it follows no redirect, keeps no cookie, adds
no header of its own, decodes nothing, and reaches the network only through
`egress.open_tcp`. The request target goes out as the agent wrote it. Bodies stream both
ways under the tunnel's flow control; nothing holds a whole body.

Failures before the response head become a short text/plain answer (400/403/502/504, the why
in `X-Fluidity-Error`, a token for scripts in `X-Fluidity-Reason`); after it the stream is
reset with UPSTREAM_ERROR, as the head is gone. A response head too large for one tunnel frame
is such a failure (502): the pool refuses one above MAX_HEAD while reading, and a head that
fits the wire but not the frame is caught as FrameTooLarge, which sends nothing.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from urllib.parse import quote_from_bytes

import trio

from fluidity.httputil import (
    ERROR_HEADER,
    REASON_HEADER,
    header_text,
    parse_absolute_url,
    upstream_reason,
)
from fluidity.protocol import ErrorCode, Request, Response
from fluidity.tunnel import FrameTooLarge, LinkClosed, StreamReset, TunnelStream

from .activity import ActivityTracker
from .egress import UpstreamError
from .origin_pool import Origin, OriginPool

log = logging.getLogger(__name__)

#: After the reply is complete, how long to read (and discard) what is left of the request body.
DRAIN_TIMEOUT = 10.0
READ_SIZE = 64 * 1024

#: scheme "://" authority, then the target (path and query) up to a fragment.
_URL = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)")
#: What a request target may hold as it is: printable ASCII, no space.
_PRINTABLE = bytes(range(0x21, 0x7F))
_SAFE = _PRINTABLE.decode("ascii")
_NOT_ABSOLUTE = "the request URL must be absolute http:// or https://"


def parse_url(url: bytes) -> tuple[Origin, bytes, bytes]:
    """The origin, the request target and the authority (for Host) of an absolute URL.

    The target is split off the bytes and passed on as the agent wrote it (no dot segments
    removed, no escapes changed: a proxy does not normalize), the fragment dropped and what
    cannot go on the wire as it is percent-encoded; `httputil` takes the origin apart. User
    info is dropped: it is never sent, nor turned into credentials. Raises UpstreamError (400).
    """
    match = _URL.match(url)
    if match is None:
        raise UpstreamError(400, _NOT_ABSOLUTE)
    authority = match[2].rpartition(b"@")[2]
    try:
        if authority.translate(None, _PRINTABLE):
            raise ValueError
        origin = parse_absolute_url((match[1] + b"://" + authority).decode("ascii"))
    except ValueError:
        raise UpstreamError(400, "the request URL is not valid") from None
    if origin.scheme not in ("http", "https"):
        raise UpstreamError(400, _NOT_ABSOLUTE)
    if not origin.host or not origin.port:
        raise UpstreamError(400, "the request URL is not valid")
    target = match[3]
    if not target.startswith(b"/"):
        target = b"/" + target
    if target.translate(None, _PRINTABLE):
        target = quote_from_bytes(target, safe=_SAFE).encode("ascii")
    return (origin.scheme, origin.host, origin.port), target, authority


class _TunnelBody:
    """The request body as it arrives from the tunnel: `first`, then what `stream` has left."""

    __slots__ = ("_activity", "_first", "_stream")

    def __init__(self, stream: TunnelStream, first: bytes, activity: ActivityTracker) -> None:
        self._stream = stream
        self._first = first
        self._activity = activity

    async def receive_some(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        data = await self._stream.receive_some(READ_SIZE)
        if data:
            self._activity.touch()
        return data


def _label(stream: TunnelStream, head: Request) -> str:
    """`stream N METHOD scheme://host[:port]`: what may be logged at INFO (no path, query or
    credentials), taken from the URL as the agent sent it."""
    scheme, _, rest = head.url.partition(b"://")
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].rpartition(b"@")[2]
    method = head.method.decode("ascii", "replace")
    where = (scheme + b"://" + authority).decode("ascii", "replace")
    return f"stream {stream.stream_id} {method} {where}"


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


async def serve_request(stream: TunnelStream, pool: OriginPool, activity: ActivityTracker) -> None:
    """Make the stream's request upstream and stream the response back."""
    head = stream.head
    assert isinstance(head, Request)
    try:
        origin, target, authority = parse_url(head.url)
        headers = list(head.headers)
        names = {name.lower() for name, _ in headers}
        if b"host" not in names:
            headers.insert(0, (b"Host", authority))
        body = None
        if head.end_stream:
            pass
        elif b"content-length" in names or b"transfer-encoding" in names:
            body = _TunnelBody(stream, b"", activity)
        elif first := await stream.receive_some(READ_SIZE):
            # A body of unknown length needs chunked framing, but only if there is one.
            activity.touch()
            headers.append((b"Transfer-Encoding", b"chunked"))
            body = _TunnelBody(stream, first, activity)
        response = await pool.request(head.method, origin, target, headers, body)
    except UpstreamError as exc:
        log.info("%s: %d %s", _label(stream, head), exc.status, exc.reason)
        await _answer_error(stream, exc)
        await _drain(stream)
        return
    with response:  # releases the connection if the body was read to its end, else closes it
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %d", _label(stream, head), response.status)
        try:
            await stream.send_reply(
                Response(stream.stream_id, response.status, response.reason, response.headers)
            )
        except FrameTooLarge as exc:
            # Nothing was sent: the stream is still unanswered, and the link is fine.
            error = UpstreamError(
                502,
                f"the origin's response head is too large for the tunnel "
                f"({exc.size} bytes encoded, at most {exc.limit})",
            )
            log.info("%s: %d %s", _label(stream, head), error.status, error.reason)
            await _answer_error(stream, error)
        else:
            try:
                while chunk := await response.receive_some():
                    activity.touch()
                    if response.complete:
                        await stream.send_last(chunk)  # the body and its end, one frame
                        break
                    await stream.send_all(chunk)
                    del chunk  # not kept while the origin's next chunk is awaited
                else:
                    await stream.send_eof()
            except UpstreamError as exc:
                log.info("%s: response body failed: %s", _label(stream, head), exc.reason)
                stream.reset(ErrorCode.UPSTREAM_ERROR, exc.reason)
                return
    await _drain(stream)
