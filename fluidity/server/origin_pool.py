"""HTTP/1.1 to origins: a lean keep-alive pool on h11, the transport under the shared client.

httpcore's pool cost about 330 µs of CPU per small request (it scans every pooled connection,
with a poll() each, on every request and release); this one does what the proxy needs and no
more: one h11 connection per socket, idle sockets kept newest first per (scheme, host, port),
one readability check when one is taken, no lock. `close_expired`, run beside the pool, closes
idle sockets as they expire, so an origin that keeps them open does not hold them until the
next request.

Every connection is opened by `egress.open_tcp`, so the policy sees it; its `UpstreamError`s
pass through untouched, status and all. Other failures become httpx2's exceptions with a short
reason, as they reach the user as 502/504 answers. A connection goes back to the pool only
when both sides finished the exchange and keep-alive holds; anything else (an error, a
cancelled request, a body not read to the end) closes it. A reused connection the origin
closed as the request went out costs one retry on a new connection, for a bodiless request
with an idempotent method only: anything else may have been acted on, so it is not replayed.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import attrs
import h11
import httpx2
import trio

from fluidity.protocol import DEFAULT_MAX_DATA_SIZE

from .egress import EgressPolicy, UpstreamError, open_tcp

log = logging.getLogger(__name__)

#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024
#: The largest response head accepted: what one tunnel frame carries (the agent's
#: max_data_size; the frame's envelope leaves room for the status line). A larger head could
#: not reach the agent anyway, so it is refused while reading (502), not buffered.
MAX_HEAD = DEFAULT_MAX_DATA_SIZE
#: How long closing an origin connection may take before it is dropped.
CLOSE_TIMEOUT = 2.0
#: Idle connections kept, over all origins; the oldest goes first.
MAX_IDLE = 64
#: An idle connection older than this is closed rather than used.
KEEPALIVE_EXPIRY = 30.0

Key = tuple[bytes, bytes, int]  # scheme, host, port

#: Methods a request may be sent again with (RFC 9110 9.2.2): when a reused connection drops
#: a request unanswered, only these are retried; a POST or PATCH answers 502 instead.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

#: The response extension holding the body stream itself: the same bytes as
#: `Response.aiter_raw()`, without httpx2's two generators per chunk. Closing the response
#: closes it (an unfinished body closes its connection).
BODY_EXTENSION = "fluidity.body"

_NO_TIMEOUTS: Mapping[str, float | None] = {}
_HTTP11 = b"HTTP/1.1"
_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or cause.__class__.__name__
    return str(cause) or cause.__class__.__name__


#: Where h11 starts quoting the data it refused ("Illegal header value b'...'").
_QUOTED = re.compile(r"\s*(?:b?['\"]|\{).*", re.DOTALL)


def request_error(exc: h11.LocalProtocolError) -> str:
    """Why the request cannot be sent, without the bytes h11 quotes: an illegal header value
    may well be a credential, and this reason is logged and answered to the client."""
    why = _QUOTED.sub("", str(exc)) or "not valid HTTP/1.1"
    return f"the request cannot be sent as HTTP/1.1: {why}"


def _seconds(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


class _Stale(Exception):
    """A reused connection the origin closed before answering; the request may go again."""


class HeadTooLarge(UpstreamError):
    """The origin's response head is larger than one tunnel frame carries."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            502, f"the origin's response head is larger than the tunnel carries ({limit} bytes)"
        )


class _Connection:
    """One origin socket (TLS or not) and its h11 state."""

    __slots__ = ("expires", "h11", "key", "max_head", "reused", "sock", "stream")

    def __init__(
        self, key: Key, stream: trio.abc.Stream, sock: trio.SocketStream, max_head: int
    ) -> None:
        self.key = key
        self.stream = stream
        self.sock = sock
        self.max_head = max_head
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        self.reused = False
        self.expires = 0.0

    def close(self) -> None:
        """Drop the socket now: for a connection that failed or is mid-exchange."""
        self.sock.socket.close()

    async def aclose(self) -> None:
        """Close an idle connection within CLOSE_TIMEOUT, else drop it."""
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.stream.aclose()
        except _ERRORS:
            pass
        finally:
            self.sock.socket.close()

    async def send_all(self, data: bytes, seconds: float) -> None:
        try:
            with trio.move_on_after(seconds):
                await self.stream.send_all(data)
                return
        except _ERRORS as exc:
            raise _write_error(exc) from exc
        raise _write_timeout(seconds)

    async def receive_some(self, seconds: float) -> bytes | bytearray:
        try:
            with trio.move_on_after(seconds):
                return await self.stream.receive_some(READ_SIZE)
        except _ERRORS as exc:
            raise _read_error(exc) from exc
        raise _read_timeout(seconds)


def _write_error(exc: BaseException) -> httpx2.WriteError:
    error = httpx2.WriteError(f"writing to the origin failed: {_why(exc)}")
    error.__cause__ = exc
    return error


def _read_error(exc: BaseException) -> httpx2.ReadError:
    error = httpx2.ReadError(f"reading from the origin failed: {_why(exc)}")
    error.__cause__ = exc
    return error


def _write_timeout(seconds: float) -> httpx2.WriteTimeout:
    return httpx2.WriteTimeout(f"the origin read nothing for {seconds:g} s")


def _read_timeout(seconds: float) -> httpx2.ReadTimeout:
    return httpx2.ReadTimeout(f"the origin sent nothing for {seconds:g} s")


def _send(conn: h11.Connection, event: h11.Event) -> bytes:
    return conn.send(event) or b""


_END = h11.EndOfMessage()  # events are frozen: one will do


async def _send_and_receive_head(
    conn: _Connection, data: bytes, retry: bool, read_timeout: float, write_timeout: float
) -> h11.Response:
    """Send a whole request in one write, then read the response head.

    One cancel scope covers both waits, its deadline moved from the write's to the read's
    (entering a scope costs twice what moving a deadline does); which wait was cut short
    says which timeout to report.
    """
    failed: httpx2.WriteError | None = None
    reading = False
    with trio.CancelScope(deadline=trio.current_time() + write_timeout) as scope:
        try:
            await conn.stream.send_all(data)
        except _ERRORS as exc:
            # The origin may have answered early and closed: read it anyway.
            failed = _write_error(exc)
        if not scope.cancel_called:
            reading = True
            return await _receive_head(conn, scope, read_timeout, retry, failed)
    if reading:
        raise _read_timeout(read_timeout)
    if scope.cancelled_caught:
        raise _write_timeout(write_timeout)
    # The write's deadline passed just as the write completed: the read gets its own scope.
    with trio.CancelScope() as scope:
        return await _receive_head(conn, scope, read_timeout, retry, failed)
    raise _read_timeout(read_timeout)


async def _receive_head(
    conn: _Connection,
    scope: trio.CancelScope,
    seconds: float,
    retry: bool,
    failed: httpx2.WriteError | None,
) -> h11.Response:
    """Read up to the response head, each read bounded by `seconds` through `scope`'s deadline.

    `retry`: if the origin answers nothing at all, raise _Stale. `failed`: the request could
    not be sent whole; if nothing comes back either, that is the error to report. A head
    above `conn.max_head` raises HeadTooLarge: h11 refuses it while incomplete, and one that
    came whole in the last read is measured (only when that many bytes arrived).
    """
    h = conn.h11
    stream = conn.stream
    got = 0
    while True:
        try:
            event = h.next_event()
        except h11.RemoteProtocolError:
            if got > conn.max_head:  # h11's max_incomplete_event_size
                raise HeadTooLarge(conn.max_head) from None
            raise
        if isinstance(event, h11.Response):
            if got > conn.max_head and got - len(h.trailing_data[0]) > conn.max_head:
                raise HeadTooLarge(conn.max_head)
            return event
        if event is h11.NEED_DATA:
            scope.deadline = trio.current_time() + seconds
            try:
                received = await stream.receive_some(READ_SIZE)
            except _ERRORS as exc:
                if got:
                    raise _read_error(exc) from exc
                if retry:
                    raise _Stale from None
                if failed is not None:
                    raise failed from None
                raise _read_error(exc) from exc
            if not received and not got:
                if retry:
                    raise _Stale
                if failed is not None:
                    raise failed
                raise httpx2.RemoteProtocolError(
                    "the origin closed the connection without answering"
                )
            got += len(received)
            h.receive_data(received)  # type: ignore[arg-type]  # any bytes-like, says h11
        elif not isinstance(event, h11.InformationalResponse):
            raise httpx2.RemoteProtocolError("the origin closed the connection mid-answer")


async def _close_body(body: AsyncIterator[bytes]) -> None:
    """Close a request body we stop reading early (trio warns about generators left to GC)."""
    if isinstance(body, AsyncGenerator):
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await body.aclose()


@attrs.frozen
class PoolStatistics:
    #: Idle connections kept, over all origins.
    idle: int


class OriginPool(httpx2.AsyncBaseTransport):
    """An httpx2 transport: HTTP/1.1 over h11, keep-alive, connections through the policy.

    No cap on connections in use (one per request in flight); at most `max_idle` idle ones,
    each kept at most `keepalive_expiry` seconds. `ssl_context` is used for https origins
    (ALPN http/1.1 is set on it). A response head above `max_head` bytes is refused (502).
    """

    def __init__(
        self,
        policy: EgressPolicy,
        connect_timeout: float,
        ssl_context: ssl.SSLContext,
        *,
        max_idle: int = MAX_IDLE,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        max_head: int = MAX_HEAD,
    ) -> None:
        ssl_context.set_alpn_protocols(["http/1.1"])
        self._max_head = max_head
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        #: Idle connections per origin, newest last.
        self._idle: dict[Key, list[_Connection]] = {}
        #: Every idle connection, oldest first (a dict keeps insertion order).
        self._by_age: dict[_Connection, None] = {}
        self._closed = False
        #: Where close_expired waits while nothing is idle.
        self._idle_added = trio.lowlevel.ParkingLot()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(idle=len(self._by_age))

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme == b"http":
            tls = False
        elif scheme == b"https":
            tls = True
        else:
            name = scheme.decode("ascii", "replace")
            raise httpx2.UnsupportedProtocol(f"the URL scheme must be http or https, not {name}")
        raw_host = url.raw_host
        port = url.port or (443 if tls else 80)
        key = (scheme, raw_host, port)
        extensions = request.extensions
        timeouts = extensions.get("timeout") or _NO_TIMEOUTS
        read_timeout = _seconds(timeouts.get("read"))
        write_timeout = _seconds(timeouts.get("write"))
        stream = request.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        try:
            head = h11.Request(
                method=request.method,
                target=extensions.get("target") or url.raw_path,
                headers=request.headers.raw,
            )
        except h11.LocalProtocolError as exc:
            raise httpx2.LocalProtocolError(request_error(exc)) from None

        conn = await self._checkout(key)
        if conn is None:
            conn = await self._connect(key, tls, timeouts)
        body = stream.__aiter__()
        try:
            first = b""
            ended = False
            try:
                while not first:
                    first = await body.__anext__()
            except StopAsyncIteration:
                ended = True
            try:
                event = await self._exchange(
                    conn, head, first, ended, body, read_timeout, write_timeout
                )
            except _Stale:
                host = raw_host.decode("ascii")
                log.debug("%s:%d had closed an idle connection; trying a new one", host, port)
                conn.close()
                conn = await self._connect(key, tls, timeouts)
                event = await self._exchange(
                    conn, head, b"", True, body, read_timeout, write_timeout
                )
        except BaseException as exc:
            conn.close()
            await _close_body(body)
            if isinstance(exc, h11.RemoteProtocolError):
                raise httpx2.RemoteProtocolError(f"the origin broke HTTP/1.1: {exc}") from exc
            if isinstance(exc, h11.LocalProtocolError):
                raise httpx2.LocalProtocolError(request_error(exc)) from None
            raise
        body = _ResponseBody(self, conn, read_timeout)
        return httpx2.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=body,
            extensions={
                "reason_phrase": event.reason,
                "http_version": _HTTP11
                if event.http_version == b"1.1"
                else b"HTTP/" + event.http_version,
                BODY_EXTENSION: body,
            },
        )

    async def _exchange(
        self,
        conn: _Connection,
        head: h11.Request,
        first: bytes,
        ended: bool,
        body: AsyncIterator[bytes],
        read_timeout: float,
        write_timeout: float,
    ) -> h11.Response:
        """Send the request and read the response head.

        The head goes out with the first body chunk (or with the end, for a request without
        a body) in one write: a bodiless GET is a single send_all.
        """
        h = conn.h11
        data = h.send(head) or b""
        if first:
            data += _send(h, h11.Data(data=first))
        if ended:
            data += _send(h, _END)
            # Nothing coming back on a connection that was idle means the origin closed it
            # as we sent: safe to send again only if there was no body to lose and the
            # method is idempotent, as the origin may have acted on it all the same.
            retry = conn.reused and not first and head.method in IDEMPOTENT
            return await _send_and_receive_head(conn, data, retry, read_timeout, write_timeout)
        failed: httpx2.WriteError | None = None
        try:
            await conn.send_all(data, write_timeout)
            async for chunk in body:
                if chunk:
                    await conn.send_all(_send(h, h11.Data(data=chunk)), write_timeout)
            data = _send(h, _END)
            if data:
                await conn.send_all(data, write_timeout)
        except httpx2.WriteError as exc:
            # The origin may have answered early and closed (a 413, say): read it anyway.
            failed = exc
            await _close_body(body)
        with trio.CancelScope() as scope:
            return await _receive_head(conn, scope, read_timeout, False, failed)
        raise _read_timeout(read_timeout)

    async def _connect(self, key: Key, tls: bool, timeouts: Mapping[str, Any]) -> _Connection:
        timeout = timeouts.get("connect")
        if timeout is None:
            timeout = self._connect_timeout
        host = key[1].decode("ascii")
        # UpstreamError (refused, denied, timed out...) passes through untouched.
        sock = await open_tcp(host, key[2], policy=self._policy, connect_timeout=timeout)
        if not tls:
            return _Connection(key, sock, sock, self._max_head)
        stream = trio.SSLStream(
            sock, self._ssl_context, server_hostname=host, https_compatible=True
        )
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            sock.socket.close()
            raise httpx2.ConnectTimeout(
                f"TLS handshake with {host} timed out after {timeout:g} s"
            ) from None
        except _ERRORS as exc:
            sock.socket.close()
            raise httpx2.ConnectError(f"TLS handshake with {host} failed: {_why(exc)}") from exc
        except BaseException:
            sock.socket.close()
            raise
        return _Connection(key, stream, sock, self._max_head)

    # -- the idle connections -------------------------------------------------------------

    async def _checkout(self, key: Key) -> _Connection | None:
        """The newest usable idle connection to `key`, if any; the ones found dead are closed.

        Readable while idle means the origin closed it (or sent junk): close, try the next.
        Older than the newest expired one means expired too: all are closed.
        """
        while idle := self._idle.get(key):
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            del self._by_age[conn]
            if conn.expires <= trio.current_time():
                for older in idle:
                    del self._by_age[older]
                self._idle.pop(key, None)
                for older in (conn, *idle):
                    await older.aclose()
                return None
            if not conn.sock.socket.is_readable():
                return conn
            await conn.aclose()
        return None

    async def _release(self, conn: _Connection) -> None:
        """Keep a connection whose exchange is complete, or close it."""
        h = conn.h11
        if h.our_state is not h11.DONE or h.their_state is not h11.DONE or self._closed:
            conn.close()
            return
        h.start_next_cycle()
        now = trio.current_time()
        conn.expires = now + self._keepalive_expiry
        conn.reused = True
        idle = self._idle.get(conn.key)
        if idle is None:
            self._idle[conn.key] = [conn]
        else:
            idle.append(conn)
        by_age = self._by_age
        by_age[conn] = None
        if len(by_age) == 1 and self._idle_added:  # it was waiting for this one
            self._idle_added.unpark_all()
        # Over the cap, or the oldest expired: close oldest first (no scan).
        while by_age:
            oldest = next(iter(by_age))
            if len(by_age) <= self._max_idle and oldest.expires > now:
                break
            await self._evict(oldest)

    async def _evict(self, conn: _Connection) -> None:
        """Close an idle connection and forget it."""
        del self._by_age[conn]
        siblings = self._idle[conn.key]
        siblings.remove(conn)
        if not siblings:
            del self._idle[conn.key]
        await conn.aclose()

    async def close_expired(self) -> None:
        """Close idle connections as they expire; run it in a nursery for the pool's life.

        It sleeps until the oldest idle connection expires (newer ones expire later), or,
        while none is idle, until one is released; closing the pool ends it.
        """
        while not self._closed:
            if not self._by_age:
                await self._idle_added.park()
                continue
            oldest = next(iter(self._by_age))
            if oldest.expires > trio.current_time():
                with trio.move_on_at(oldest.expires):
                    await self._idle_added.park()
            else:
                await self._evict(oldest)

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their responses do."""
        self._closed = True
        self._idle_added.unpark_all()  # close_expired returns
        idle = list(self._by_age)
        self._by_age.clear()
        self._idle.clear()
        with trio.move_on_after(CLOSE_TIMEOUT):
            for conn in idle:
                await conn.aclose()
        for conn in idle:
            conn.close()


class _ResponseBody(httpx2.AsyncByteStream):
    """The response body as h11 delivers it; closing it releases or closes the connection."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: OriginPool, conn: _Connection, timeout: float) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._timeout = timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        h = conn.h11
        try:
            while True:
                event = h.next_event()
                if isinstance(event, h11.Data):
                    return bytes(event.data)
                if event is not h11.NEED_DATA:
                    break
                received = await conn.receive_some(self._timeout)
                h.receive_data(received)  # type: ignore[arg-type]  # any bytes-like, says h11
        except BaseException as exc:
            self._conn = None
            conn.close()
            if isinstance(exc, h11.RemoteProtocolError):
                raise httpx2.RemoteProtocolError(f"the origin broke HTTP/1.1: {exc}") from exc
            raise
        self._conn = None
        if not isinstance(event, h11.EndOfMessage):
            conn.close()
            raise httpx2.RemoteProtocolError("the origin's answer ended unexpectedly")
        await self._pool._release(conn)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        # What is already buffered may complete the answer (a HEAD, a 204, a short body).
        try:
            event = conn.h11.next_event()
            while isinstance(event, h11.Data):
                event = conn.h11.next_event()
        except h11.RemoteProtocolError:
            event = h11.NEED_DATA
        if isinstance(event, h11.EndOfMessage):
            await self._pool._release(conn)
        else:
            conn.close()
