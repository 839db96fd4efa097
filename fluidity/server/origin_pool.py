"""HTTP/1.1 to origins: the server's own small client on h11, with a keep-alive pool.

Why not httpx2 over httpcore2: on the bench the server spent three times the CPU per proxied
1 KiB GET with it (httpcore2's pool scans every pooled connection, with a poll() each, on every
request and release), and what httpx2 adds above it (auth, cookies, redirects, URL
normalization, default headers) is what a proxy must turn off (docs/data-plane.md, "Upstream
client", has the numbers). This does what the proxy needs and no more: one h11 connection per
socket, idle sockets kept newest first per (scheme, host, port), one readability check when
one is taken, no lock.

Every connection is opened by `egress.open_tcp`, so the policy sees it (its errors pass
through untouched). Other failures are translated here, once, into the same tree::

    UpstreamError
    ├── OriginError      502  the origin failed: refused TLS, dropped the connection, broke HTTP
    │   └── HeadTooLarge 502  its response head is larger than one tunnel frame
    ├── OriginTimeout    504  it sent nothing (or read nothing) for the read (write) timeout
    └── InvalidRequest   400  the request cannot be sent as HTTP/1.1 (without quoting it)

A connection goes back to the pool only when both sides finished the exchange and keep-alive
holds; anything else (an error, a cancelled request, a body not read to the end) closes it. A
reused connection the origin closed as the request went out costs one retry on a new
connection, for a bodiless request with an idempotent method only: anything else may have been
acted on, so it is not replayed.

Closing never waits: a TLS stream made `https_compatible` (as every HTTP client's is) closes
by closing its socket, as a plain one does, so connections are closed where they are dropped,
with no await on the request path. `close_expired`, run beside the pool, closes idle ones as
they expire, so an origin that keeps them open does not hold them until the next request.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Protocol

import attrs
import h11
import trio

from fluidity.protocol import DEFAULT_MAX_DATA_SIZE

from .egress import ConnectTimeout, EgressPolicy, UpstreamError, open_tcp

log = logging.getLogger(__name__)

#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024
#: The largest response head accepted: what one tunnel frame carries (the agent's
#: max_data_size; the frame's envelope leaves room for the status line). A larger head could
#: not reach the agent anyway, so it is refused while reading (502), not buffered.
MAX_HEAD = DEFAULT_MAX_DATA_SIZE
#: Idle connections kept, over all origins; the oldest goes first.
MAX_IDLE = 64
#: An idle connection older than this is closed rather than used.
KEEPALIVE_EXPIRY = 30.0

#: Where a request goes: scheme ("http" or "https"), host (lower case), port.
Origin = tuple[str, str, int]

#: Methods a request may be sent again with (RFC 9110 9.2.2): when a reused connection drops
#: a request unanswered, only these are retried; a POST or PATCH answers 502 instead.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


class OriginError(UpstreamError):
    """The origin failed (502); the reason says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


class HeadTooLarge(OriginError):
    """The origin's response head is larger than one tunnel frame carries."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the origin's response head is larger than the tunnel carries ({limit} bytes)"
        )


class OriginTimeout(UpstreamError):
    """The origin sent nothing, or read nothing, for as long as allowed (504)."""

    def __init__(self, reason: str) -> None:
        super().__init__(504, reason)


class InvalidRequest(UpstreamError):
    """The request cannot be sent as HTTP/1.1 (400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(400, reason)


#: Where h11 starts quoting the data it refused ("Illegal header value b'...'").
_QUOTED = re.compile(r"\s*(?:b?['\"]|\{).*", re.DOTALL)


def request_error(exc: h11.LocalProtocolError) -> str:
    """Why the request cannot be sent, without the bytes h11 quotes: an illegal header value
    may well be a credential, and this reason is logged and answered to the client."""
    why = _QUOTED.sub("", str(exc)) or "not valid HTTP/1.1"
    return f"the request cannot be sent as HTTP/1.1: {why}"


def origin_ssl_context(cadata: str | None = None) -> ssl.SSLContext:
    """A TLS context for origins: the system CA store (or `cadata` alone), ALPN http/1.1.

    The pool speaks HTTP/1.1 only, so it says so; a context a caller hands the pool is used
    as it is (it may be shared: the pool never changes it).
    """
    context = ssl.create_default_context(cadata=cadata)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or cause.__class__.__name__
    return str(cause) or cause.__class__.__name__


def _write_error(exc: BaseException) -> OriginError:
    error = OriginError(f"writing to the origin failed: {_why(exc)}")
    error.__cause__ = exc
    return error


def _read_error(exc: BaseException) -> OriginError:
    error = OriginError(f"reading from the origin failed: {_why(exc)}")
    error.__cause__ = exc
    return error


def _write_timeout(seconds: float) -> OriginTimeout:
    return OriginTimeout(f"the origin read nothing for {seconds:g} s")


def _read_timeout(seconds: float) -> OriginTimeout:
    return OriginTimeout(f"the origin sent nothing for {seconds:g} s")


def _broke(exc: h11.RemoteProtocolError) -> OriginError:
    error = OriginError(f"the origin broke HTTP/1.1: {exc}")
    error.__cause__ = exc
    return error


class Body(Protocol):
    """A request body as the pool reads it: chunks, then b"" once it ended."""

    async def receive_some(self) -> bytes: ...


class _Stale(Exception):
    """A reused connection the origin closed before answering; the request may go again."""


class _Connection:
    """One origin socket (TLS or not) and its h11 state."""

    __slots__ = ("expires", "h11", "key", "max_head", "reused", "sock", "stream")

    def __init__(
        self, key: Origin, stream: trio.abc.Stream, sock: trio.SocketStream, max_head: int
    ) -> None:
        self.key = key
        self.stream = stream
        self.sock = sock
        self.max_head = max_head
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        self.reused = False
        self.expires = 0.0

    def close(self) -> None:
        """Close the socket: all a TLS stream in https_compatible mode does, without waiting."""
        self.sock.socket.close()

    def start_over(self) -> None:
        """Fresh h11 state for the next exchange, when this one ended outside h11's sight
        (a body read straight from the socket, see OriginResponse)."""
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.max_head)

    async def send_all(self, data: bytes, seconds: float) -> None:
        try:
            with trio.move_on_after(seconds):
                await self.stream.send_all(data)
                return
        except _ERRORS as exc:
            raise _write_error(exc) from exc
        raise _write_timeout(seconds)

    async def receive_some(self, seconds: float, max_bytes: int = READ_SIZE) -> bytes | bytearray:
        try:
            with trio.move_on_after(seconds):
                return await self.stream.receive_some(max_bytes)
        except _ERRORS as exc:
            raise _read_error(exc) from exc
        raise _read_timeout(seconds)


def _send(conn: h11.Connection, event: h11.Event) -> bytes:
    return conn.send(event) or b""


_END = h11.EndOfMessage()  # events are frozen: one will do
#: What h11's next_event returns.
_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


async def _send_and_receive_head(
    conn: _Connection, data: bytes, retry: bool, read_timeout: float, write_timeout: float
) -> h11.Response:
    """Send a whole request in one write, then read the response head.

    One cancel scope covers both waits, its deadline moved from the write's to the read's
    (entering a scope costs twice what moving a deadline does); which wait was cut short
    says which timeout to report.
    """
    failed: OriginError | None = None
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
    failed: OriginError | None,
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
        except h11.RemoteProtocolError as exc:
            if got > conn.max_head:  # h11's max_incomplete_event_size
                raise HeadTooLarge(conn.max_head) from None
            raise _broke(exc) from exc
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
                raise OriginError("the origin closed the connection without answering")
            got += len(received)
            h.receive_data(received)  # type: ignore[arg-type]  # any bytes-like, says h11
        elif not isinstance(event, h11.InformationalResponse):
            raise OriginError("the origin closed the connection mid-answer")


@attrs.frozen
class PoolStatistics:
    #: Idle connections kept, over all origins.
    idle: int


class OriginPool:
    """HTTP/1.1 over h11 to origins, keep-alive, every connection through the policy.

    No cap on connections in use (one per request in flight); at most `max_idle` idle ones,
    each kept at most `keepalive_expiry` seconds. `ssl_context` is for https origins (by
    default `origin_ssl_context()`; one given is used unchanged). A response head above
    `max_head` bytes is refused (502). Each read waits at most `read_timeout` seconds, each
    write `write_timeout` (default: the read timeout).
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = MAX_IDLE,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        max_head: int = MAX_HEAD,
    ) -> None:
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._write_timeout = read_timeout if write_timeout is None else write_timeout
        self._ssl_context = ssl_context if ssl_context is not None else origin_ssl_context()
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._max_head = max_head
        #: Idle connections per origin, newest last.
        self._idle: dict[Origin, list[_Connection]] = {}
        #: Every idle connection, oldest first (a dict keeps insertion order).
        self._by_age: dict[_Connection, None] = {}
        self._closed = False
        #: Where close_expired waits while nothing is idle.
        self._idle_added = trio.lowlevel.ParkingLot()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(idle=len(self._by_age))

    async def request(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body | None = None,
    ) -> OriginResponse:
        """Send a request and return the response once its head is in; read the body from it.

        `headers` go out as given (Host included: the pool adds nothing); `body` (None: none)
        is framed by the Content-Length or Transfer-Encoding among them. Raises UpstreamError.
        """
        try:
            head = h11.Request(method=method, target=target, headers=headers)
        except h11.LocalProtocolError as exc:
            raise InvalidRequest(request_error(exc)) from None
        # The body's first piece goes out with the head, so it is in hand before a connection
        # is taken: an idle one is checked for life just before it is used.
        first = b"" if body is None else await body.receive_some()
        conn = self._checkout(origin)
        if conn is None:
            conn = await self._connect(origin)
        try:
            try:
                event = await self._exchange(conn, head, first, body if first else None)
            except _Stale:
                log.debug("%s:%d had closed an idle connection; trying a new one", *origin[1:])
                conn.close()
                conn = await self._connect(origin)
                event = await self._exchange(conn, head, b"", None)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, h11.LocalProtocolError):
                raise InvalidRequest(request_error(exc)) from None
            raise
        return OriginResponse(self, conn, event, self._read_timeout)

    async def _exchange(
        self, conn: _Connection, head: h11.Request, first: bytes, body: Body | None
    ) -> h11.Response:
        """Send the request and read the response head.

        The head goes out with the first body chunk (or with the end, for a request without
        a body) in one write: a bodiless GET is a single send_all. `body` has the rest.
        """
        h = conn.h11
        data = h.send(head) or b""
        if first:
            data += _send(h, h11.Data(data=first))
        if body is None:
            data += _send(h, _END)
            # Nothing coming back on a connection that was idle means the origin closed it
            # as we sent: safe to send again only if there was no body to lose and the
            # method is idempotent, as the origin may have acted on it all the same.
            retry = conn.reused and not first and head.method in IDEMPOTENT
            return await _send_and_receive_head(
                conn, data, retry, self._read_timeout, self._write_timeout
            )
        failed: OriginError | None = None
        try:
            await conn.send_all(data, self._write_timeout)
            while chunk := await body.receive_some():
                await conn.send_all(_send(h, h11.Data(data=chunk)), self._write_timeout)
                del chunk  # not kept while the agent's next chunk is awaited
            data = _send(h, _END)
            if data:
                await conn.send_all(data, self._write_timeout)
        except OriginError as exc:
            # The origin may have answered early and closed (a 413, say): read it anyway.
            failed = exc
        with trio.CancelScope() as scope:
            return await _receive_head(conn, scope, self._read_timeout, False, failed)
        raise _read_timeout(self._read_timeout)

    async def _connect(self, key: Origin) -> _Connection:
        scheme, host, port = key
        timeout = self._connect_timeout
        sock = await open_tcp(host, port, policy=self._policy, connect_timeout=timeout)
        if scheme != "https":
            return _Connection(key, sock, sock, self._max_head)
        stream = trio.SSLStream(
            sock, self._ssl_context, server_hostname=host, https_compatible=True
        )
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            sock.socket.close()
            raise ConnectTimeout(
                f"TLS handshake with {host} timed out after {timeout:g} s"
            ) from None
        except _ERRORS as exc:
            sock.socket.close()
            raise OriginError(f"TLS handshake with {host} failed: {_why(exc)}") from exc
        except BaseException:
            sock.socket.close()
            raise
        return _Connection(key, stream, sock, self._max_head)

    # -- the idle connections -------------------------------------------------------------

    def _checkout(self, key: Origin) -> _Connection | None:
        """The newest usable idle connection to `key`, if any; the ones found dead are closed.

        Readable while idle means the origin closed it (or sent junk): close, try the next.
        Older than the newest expired one means expired too: all are closed.
        """
        idle = self._idle.get(key)
        if idle is None:
            return None
        found = None
        while idle:
            conn = idle.pop()
            del self._by_age[conn]
            if conn.expires <= trio.current_time():
                conn.close()
                for older in idle:
                    del self._by_age[older]
                    older.close()
                idle.clear()
            elif conn.sock.socket.is_readable():
                conn.close()
            else:
                found = conn
                break
        if not idle:
            del self._idle[key]
        return found

    def _release(self, conn: _Connection) -> None:
        """Keep a connection whose exchange is complete (or started over), or close it."""
        h = conn.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE and not self._closed:
            h.start_next_cycle()
        elif h.our_state is not h11.IDLE or h.their_state is not h11.IDLE or self._closed:
            conn.close()
            return
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
            self._evict(oldest)

    def _evict(self, conn: _Connection) -> None:
        """Close an idle connection and forget it."""
        del self._by_age[conn]
        siblings = self._idle[conn.key]
        siblings.remove(conn)
        if not siblings:
            del self._idle[conn.key]
        conn.close()

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
                self._evict(oldest)

    def close(self) -> None:
        """Close the idle connections; those in use close when their responses do."""
        self._closed = True
        self._idle_added.unpark_all()  # close_expired returns
        for conn in self._by_age:
            conn.close()
        self._by_age.clear()
        self._idle.clear()


class OriginResponse:
    """A response whose head is in: status, reason, headers (raw casing, in order), and the
    body to read with `receive_some`. Closing it (or leaving its `with` block) releases the
    connection if the body was read to the end, else closes it."""

    __slots__ = (
        "_ahead",
        "_conn",
        "_head",
        "_length",
        "_pool",
        "_received",
        "_remaining",
        "_reusable",
        "_timeout",
        "complete",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    def __init__(
        self, pool: OriginPool, conn: _Connection, head: h11.Response, timeout: float
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._timeout = timeout
        self.status = head.status_code
        self.reason = head.reason
        self.http_version = head.http_version
        self.headers: tuple[tuple[bytes, bytes], ...] = tuple(head.headers.raw_items())
        #: The body has been read to its end (the piece `receive_some` returned last was the
        #: last one, or b"" came back): the caller can end its copy with that piece.
        self.complete = False
        #: An event read after a Data one, looking for the end, and not handed out yet.
        self._ahead: _Next | None = None
        # A body framed by Content-Length is read straight from the socket once h11 has
        # handed out what it had buffered (see _receive_direct): its length, the bytes
        # handed out so far, and those still to read (0: h11 reads the body). The head is
        # looked at only then: a small answer is whole in h11's buffer and never needs it.
        self._head: h11.Response | None = head
        self._length: int | None = None
        self._received = 0
        self._remaining = 0
        #: Whether the connection may serve another request once this body is read.
        self._reusable = False

    def __enter__(self) -> OriginResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def receive_some(self) -> bytes:
        """The next piece of the body (at most READ_SIZE bytes), b"" at its end.

        When the end is already buffered behind a piece, that piece comes back with
        `complete` set and the connection released: a small response's body and its end
        then go to the tunnel as one frame, encoded once.
        """
        conn = self._conn
        if conn is None:
            self.complete = True
            return b""
        if self._remaining:
            return await self._receive_direct(conn)
        h = conn.h11
        direct = False
        try:
            while True:
                event, self._ahead = self._ahead or h.next_event(), None
                if isinstance(event, h11.Data):
                    self._received += len(event.data)
                    after = h.next_event()
                    if isinstance(after, h11.EndOfMessage):
                        self._end(conn, after)
                    elif after is h11.NEED_DATA:
                        self._go_direct()
                    else:
                        self._ahead = after
                    return bytes(event.data)
                if event is not h11.NEED_DATA or (direct := self._go_direct()):
                    break
                received = await conn.receive_some(self._timeout)
                h.receive_data(received)  # type: ignore[arg-type]  # any bytes-like, says h11
        except BaseException as exc:
            self._conn = None
            conn.close()
            if isinstance(exc, h11.RemoteProtocolError):
                raise _broke(exc) from exc
            raise
        if direct:  # the rest of the body is read past h11
            return await self._receive_direct(conn)
        self._end(conn, event)
        return b""

    def _go_direct(self) -> bool:
        """Read the rest of a Content-Length body straight from the socket (h11 said NEED_DATA:
        it holds none of it). True if there is a rest to read."""
        head, self._head = self._head, None
        if head is not None and self._conn is not None:  # the first time: look at the head
            h = self._conn.h11
            self._length = _content_length(h, head)
            self._reusable = h.our_state is h11.DONE and _keeps_alive(head)
        if self._length is not None:
            self._remaining = self._length - self._received
        return self._remaining > 0

    async def _receive_direct(self, conn: _Connection) -> bytes:
        """The next piece of a Content-Length body, read from the socket without h11.

        h11 would copy each read into its buffer and out again and build an event for it:
        about a fifth of the server's CPU per GiB of plain HTTP, for bytes it only counts.
        We count them here; once the length is in, the connection starts over with fresh h11
        state (if the exchange keeps it alive) and goes back to the pool.
        """
        try:
            data = await conn.receive_some(self._timeout, min(READ_SIZE, self._remaining))
        except BaseException:
            self._conn = None
            conn.close()
            raise
        if not data:
            self._conn = None
            conn.close()
            raise OriginError(
                "the origin closed the connection without sending the complete message body "
                f"({self._remaining} of the {self._length} bytes its Content-Length announced "
                "missing)"
            )
        self._remaining -= len(data)
        if not self._remaining:
            self._conn = None
            self.complete = True
            if self._reusable:
                conn.start_over()
                self._pool._release(conn)
            else:
                conn.close()
        return data if type(data) is bytes else bytes(data)

    def _end(self, conn: _Connection, event: _Next) -> None:
        """The body ended with `event`: release the connection if that is its proper end."""
        self._conn = None
        if not isinstance(event, h11.EndOfMessage):
            conn.close()
            raise OriginError("the origin's answer ended unexpectedly")
        self.complete = True
        self._pool._release(conn)

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if self._remaining:  # part of the body is still in the socket
            conn.close()
            return
        # What is already buffered may complete the answer (a HEAD, a 204, a short body).
        try:
            event = self._ahead or conn.h11.next_event()
            while isinstance(event, h11.Data):
                event = conn.h11.next_event()
        except h11.RemoteProtocolError:
            event = h11.NEED_DATA
        if isinstance(event, h11.EndOfMessage):
            self._pool._release(conn)
        else:
            conn.close()


def _content_length(conn: h11.Connection, head: h11.Response) -> int | None:
    """The body's length when a body follows framed by Content-Length, else None (h11 has
    validated the header: one value, digits only, and Transfer-Encoding would override it)."""
    if conn.their_state is not h11.SEND_BODY:
        return None  # a HEAD, a 204 or 304: no body
    length = None
    for name, value in head.headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


def _keeps_alive(head: h11.Response) -> bool:
    """Whether the origin keeps the connection open after this response (h11's rule)."""
    if head.http_version < b"1.1":
        return False
    return not any(
        name == b"connection" and b"close" in {t.strip() for t in value.lower().split(b",")}
        for name, value in head.headers
    )
