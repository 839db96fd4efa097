"""Request streams: one HTTP exchange with the origin through a shared httpx2 client.

The client is set up to behave as a proxy, not as a browser: it follows no redirect, keeps no
cookie, adds no header of its own, decodes nothing, ignores the environment, and reaches the
network only through `egress.open_tcp`. Bodies stream both ways under the tunnel's flow control;
nothing holds a whole body.

Failures before the response head become a short text/plain answer (403/502/504, reason in
`X-Fluidity-Error`); after it the stream is reset with UPSTREAM_ERROR, as the head is gone.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

import httpcore2
import httpx2
import trio

from fluidity.protocol import ErrorCode, Request, Response
from fluidity.tunnel import LinkClosed, StreamReset, TunnelStream

from .activity import ActivityTracker
from .egress import EgressPolicy, UpstreamError, open_tcp

log = logging.getLogger(__name__)

#: How long closing an origin connection may take (a TLS close_notify) before it is dropped.
CLOSE_TIMEOUT = 2.0
#: After the reply is complete, how long to read (and discard) what is left of the request body.
DRAIN_TIMEOUT = 10.0
READ_SIZE = 64 * 1024


# -- the network backend: every origin connection goes through open_tcp ----------------------


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or cause.__class__.__name__
    return str(cause) or cause.__class__.__name__


def _seconds(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


class EgressNetworkStream(httpcore2.AsyncNetworkStream):
    """httpcore's view of one origin connection; trio errors become httpcore's."""

    def __init__(self, stream: trio.abc.Stream, sock: trio.SocketStream) -> None:
        self._stream = stream
        self._sock = sock

    # httpcore's interface passes timeouts in; they are applied right here with fail_after.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            with trio.fail_after(_seconds(timeout)):
                return bytes(await self._stream.receive_some(max_bytes))
        except trio.TooSlowError:
            raise httpcore2.ReadTimeout(f"the origin sent nothing for {timeout:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore2.ReadError(f"reading from the origin failed: {_why(exc)}") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            with trio.fail_after(_seconds(timeout)):
                await self._stream.send_all(buffer)
        except trio.TooSlowError:
            raise httpcore2.WriteTimeout(f"the origin read nothing for {timeout:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore2.WriteError(f"writing to the origin failed: {_why(exc)}") from exc

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._sock)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore2.AsyncNetworkStream:
        tls = trio.SSLStream(
            self._stream, ssl_context, server_hostname=server_hostname, https_compatible=True
        )
        try:
            with trio.fail_after(_seconds(timeout)):
                await tls.do_handshake()
        except trio.TooSlowError:
            await trio.aclose_forcefully(self._sock)
            raise httpcore2.ConnectTimeout(
                f"TLS handshake with {server_hostname} timed out after {timeout:g} s"
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await trio.aclose_forcefully(self._sock)
            raise httpcore2.ConnectError(
                f"TLS handshake with {server_hostname} failed: {_why(exc)}"
            ) from exc
        return EgressNetworkStream(tls, self._sock)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self._stream, trio.SSLStream):
            return self._stream._ssl_object
        if info == "client_addr":
            return self._sock.socket.getsockname()
        if info == "server_addr":
            return self._sock.socket.getpeername()
        if info == "socket":
            return self._sock.socket
        if info == "is_readable":
            return self._sock.socket.is_readable()
        return None


class EgressBackend(httpcore2.AsyncNetworkBackend):
    """Connects httpcore through `open_tcp`, so the egress policy sees every connection."""

    def __init__(self, policy: EgressPolicy, connect_timeout: float) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        # UpstreamError passes through httpcore and httpx2 untouched, status and all.
        sock = await open_tcp(
            host,
            port,
            policy=self.policy,
            connect_timeout=self.connect_timeout if timeout is None else timeout,
        )
        return EgressNetworkStream(sock, sock)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not an egress destination")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


# -- the httpx2 transport over that backend -----------------------------------------------------

#: httpcore2 -> httpx2, most specific first.
_HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _HTTPCORE_ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _ResponseBody(httpx2.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parts = self._stream.__aiter__()
        try:
            with _httpx_errors():
                async for part in parts:
                    yield part
        finally:
            if isinstance(parts, AsyncGenerator):
                await parts.aclose()  # trio warns about async generators left to the GC

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with _httpx_errors():
                await aclose()


class EgressTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport on an httpcore2 pool whose connections go through the policy."""

    def __init__(
        self, policy: EgressPolicy, connect_timeout: float, ssl_context: ssl.SSLContext
    ) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=None,
            max_keepalive_connections=64,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            network_backend=EgressBackend(policy, connect_timeout),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseBody(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _DiscardingCookieJar(http.cookiejar.CookieJar):
    """A proxy keeps no cookies: what one client's origin sets must not reach another request."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        pass


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
    transport = EgressTransport(policy, connect_timeout, verify or ssl.create_default_context())
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


def where(url: httpx2.URL) -> str:
    """scheme://host[:port] of a URL: what may be logged at INFO (no path, no query)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}"


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
    with trio.move_on_after(DRAIN_TIMEOUT):
        try:
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
    label = f"stream {stream.stream_id} {head.method.decode('ascii', 'replace')}"
    try:
        request = await _build_request(stream, head, activity)
        label = f"{label} {where(request.url)}"
        response = await client.send(request, stream=True, auth=_NO_AUTH, follow_redirects=False)
    except (UpstreamError, httpx2.HTTPError) as exc:
        error = exc if isinstance(exc, UpstreamError) else _translate(exc)
        log.info("%s: %d %s", label, error.status, error.reason)
        await _answer_error(stream, error)
        await _drain(stream)
        return
    try:
        log.debug("%s: %d", label, response.status_code)
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
            log.info("%s: response body failed: %s", label, error.reason)
            stream.reset(ErrorCode.UPSTREAM_ERROR, error.reason)
            return
        await stream.send_eof()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await response.aclose()
    await _drain(stream)
