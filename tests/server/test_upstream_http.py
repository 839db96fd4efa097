"""Request streams through the real handler, over a real link, to a local h11 origin."""

from __future__ import annotations

import hashlib
import itertools
import logging

import pytest
import trio
import trio.testing

from fluidity.protocol import ErrorCode, Request, Response
from fluidity.server import egress
from fluidity.server.egress import EgressPolicy, UpstreamError
from fluidity.server.upstream_http import parse_url
from fluidity.tunnel import StreamReset
from tests.server.harness import exchange, read_all, serving
from tests.support.origins import (
    GZIP_BODY,
    HTTPOrigin,
    pattern_chunks,
    pattern_sha256,
)
from tests.support.pki import TestTLS
from tests.support.scripted import OK, Peer, scripted_origin

MB = 1024 * 1024


async def test_get_reaches_the_origin_with_exactly_the_agents_headers(origin: HTTPOrigin) -> None:
    sent = [("Host", f"127.0.0.1:{origin.port}"), ("X-Custom", "One"), ("accept", "text/html")]
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", origin.url("/echo?q=1"), sent)
    assert result.status == 200
    echo = result.json()
    assert echo["method"] == "GET"
    assert echo["target"] == "/echo?q=1"
    # No User-Agent, Accept-Encoding, Connection... of httpx's own; casing and order kept.
    assert echo["headers"] == [list(pair) for pair in sent]


async def test_host_is_added_only_when_the_agent_sent_none(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", origin.url("/echo"), [("X-A", "1")])
    assert result.json()["headers"] == [["Host", f"127.0.0.1:{origin.port}"], ["X-A", "1"]]


async def test_the_request_target_is_passed_on_unnormalized(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", origin.url("/echo/a/../b/./c?x=%41&y=a+b"))
    assert result.json()["target"] == "/echo/a/../b/./c?x=%41&y=a+b"


async def test_credentials_in_the_url_are_not_turned_into_basic_auth(origin: HTTPOrigin) -> None:
    url = origin.url("/echo").replace("http://", "http://user:s3cret@")
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", url)
    assert result.status == 200
    assert result.json()["headers"] == [["Host", f"127.0.0.1:{origin.port}"]]


@pytest.mark.parametrize(
    ("url", "origin", "target", "authority"),
    [
        (b"http://h", ("http", "h", 80), b"/", b"h"),
        (b"http://h?q=1", ("http", "h", 80), b"/?q=1", b"h"),
        (b"HTTPS://H.Test", ("https", "h.test", 443), b"/", b"H.Test"),
        (b"http://u:p@h:81/a/../b?x=%41#frag", ("http", "h", 81), b"/a/../b?x=%41", b"h:81"),
        (b"http://h/a#b c", ("http", "h", 80), b"/a", b"h"),  # what follows "#" is never sent
        (b"http://[::1]:8080/p", ("http", "::1", 8080), b"/p", b"[::1]:8080"),
        (b"http://h.test:/", ("http", "h.test", 80), b"/", b"h.test:"),
        # What cannot go on the wire as it is gets percent-encoded, the rest is left alone.
        (b"http://h/a b%20", ("http", "h", 80), b"/a%20b%20", b"h"),
        (b"http://h/\x7f", ("http", "h", 80), b"/%7F", b"h"),
        (b"http://h/caf\xc3\xa9", ("http", "h", 80), b"/caf%C3%A9", b"h"),
    ],
)
def test_the_url_is_split_and_the_target_kept_as_written(
    url: bytes, origin: tuple[str, str, int], target: bytes, authority: bytes
) -> None:
    assert parse_url(url) == (origin, target, authority)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"ftp://h.test/file", "must be absolute http:// or https://"),
        (b"h.test/no-scheme", "must be absolute http:// or https://"),
        (b"http:/h.test/", "must be absolute http:// or https://"),
        (b"http://h.test:abc/", "not valid"),
        (b"http://h.test:0/", "not valid"),
        (b"http://h.test:65536/", "not valid"),
        (b"http://h\xff.test/", "not valid"),
        (b"http://h .test/", "not valid"),
        (b"http://[::1/", "not valid"),
        (b"http://:80/", "not valid"),
        (b"http://user@/", "not valid"),
    ],
)
def test_a_bad_url_is_refused_with_400(raw: bytes, reason: str) -> None:
    with pytest.raises(UpstreamError, match=reason) as caught:
        parse_url(raw)
    assert caught.value.status == 400


async def test_post_with_content_length_keeps_it(origin: HTTPOrigin) -> None:
    body = b"x" * 100_000
    headers = [("Content-Length", str(len(body))), ("Content-Type", "application/octet-stream")]
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(
                env.agent, "POST", origin.url("/upload"), headers, [body[:30_000], body[30_000:]]
            )
    assert result.status == 200
    assert result.json() == {
        "received": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "framing": "content-length",
    }


async def test_upload_without_length_is_streamed_chunked(origin: HTTPOrigin) -> None:
    n = 3 * MB
    with trio.fail_after(15):
        async with serving() as env:
            result = await exchange(
                env.agent, "PUT", origin.url("/upload"), [], pattern_chunks(n, 50_000)
            )
    assert result.json() == {"received": n, "sha256": pattern_sha256(n), "framing": "chunked"}


async def test_a_bodyless_request_without_end_stream_gets_no_chunked_framing(
    origin: HTTPOrigin,
) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "DELETE", origin.url("/upload"), [], [])
    assert result.json() == {
        "received": 0,
        "sha256": hashlib.sha256().hexdigest(),
        "framing": "none",
    }


async def test_head_204_and_304_have_no_body(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            head = await exchange(env.agent, "HEAD", origin.url("/stream?n=5000"))
            no_content = await exchange(env.agent, "GET", origin.url("/status/204"))
            not_modified = await exchange(env.agent, "GET", origin.url("/status/304"))
    assert (head.status, head.header("content-length"), head.body) == (200, "5000", b"")
    assert (no_content.status, no_content.body) == (204, b"")
    assert (not_modified.status, not_modified.body) == (304, b"")


async def test_reason_phrase_is_passed_through(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", origin.url("/status/418"))
    assert (result.status, result.reason) == (418, b"I'm a Teapot")


async def test_large_download_streams_with_bounded_buffers(origin: HTTPOrigin) -> None:
    n = 20 * MB
    digest = hashlib.sha256()
    received = 0
    peak_buffered = peak_queued = 0
    with trio.fail_after(30):
        async with serving() as env:
            stream = await env.agent.open_stream(
                Request(0, b"GET", origin.url(f"/stream?n={n}").encode(), end_stream=True)
            )
            async with stream:
                reply = await stream.wait_reply()
                assert isinstance(reply, Response)
                while data := await stream.receive_some():
                    digest.update(data)
                    received += len(data)
                    peak_buffered = max(peak_buffered, env.agent.statistics().buffered_bytes)
                    peak_queued = max(peak_queued, env.server.statistics().queued_bytes)
            settings = env.agent.config.settings
            assert peak_buffered <= settings.initial_window
            assert peak_queued <= env.server.config.stream_send_buffer
    assert reply.status == 200
    assert reply.headers[1] == (b"content-length", str(n).encode())
    assert (received, digest.hexdigest()) == (n, pattern_sha256(n))


async def test_a_reader_that_stops_stops_the_origin(origin: HTTPOrigin) -> None:
    """Backpressure: nothing pulls the body faster than the agent takes it."""
    n = 1024 * MB  # never sent in full
    with trio.fail_after(20):
        async with serving() as env:
            stream = await env.agent.open_stream(
                Request(0, b"GET", origin.url(f"/stream?n={n}").encode(), end_stream=True)
            )
            async with stream:
                await stream.wait_reply()
                await stream.receive_some()
                while True:  # until the origin stalls on full socket buffers
                    before = origin.streamed
                    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                    if origin.streamed == before:
                        break
                assert env.server.statistics().queued_bytes <= env.server.config.stream_send_buffer
                assert (
                    env.agent.statistics().buffered_bytes
                    <= env.agent.config.settings.initial_window
                )
                stalled = origin.streamed
            assert stalled < 100 * MB  # what the kernel's socket buffers can hold, at most


async def test_gzip_bytes_pass_through_undecoded(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(
                env.agent, "GET", origin.url("/gzip"), [("Accept-Encoding", "gzip")]
            )
    assert result.header("content-encoding") == "gzip"
    assert result.body == GZIP_BODY


async def test_redirects_are_passed_back_not_followed(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", origin.url("/redirect"))
    assert result.status == 302
    assert result.header("location") == "/echo?from=redirect"
    assert result.body == b"redirecting\n"
    assert [r.target for r in origin.requests] == [b"/redirect"]


async def test_cookies_are_not_kept_between_requests(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            first = await exchange(env.agent, "GET", origin.url("/set-cookie"))
            second = await exchange(env.agent, "GET", origin.url("/echo"))
            third = await exchange(env.agent, "GET", origin.url("/echo"), [("Cookie", "mine=2")])
    assert first.header("set-cookie") == "fluidity_test=1; Path=/"
    assert not [h for h in second.json()["headers"] if h[0].lower() == "cookie"]
    assert [h for h in third.json()["headers"] if h[0].lower() == "cookie"] == [
        ["Cookie", "mine=2"]
    ]


async def test_https_origin_with_a_trusted_ca(tls_origin: HTTPOrigin, tls: TestTLS) -> None:
    with trio.fail_after(10):
        async with serving(verify=tls.client) as env:
            result = await exchange(env.agent, "GET", tls_origin.url("/echo"))
            by_name = await exchange(
                env.agent, "GET", f"https://origin.test:{tls_origin.port}/echo"
            )
    assert result.status == 200
    assert by_name.status == 200
    assert by_name.json()["headers"] == [["Host", f"origin.test:{tls_origin.port}"]]


async def test_https_origin_with_an_untrusted_certificate_is_502(tls_origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:  # system CAs: the trustme CA is unknown
            result = await exchange(env.agent, "GET", tls_origin.url("/echo"))
    assert result.status == 502
    assert "CERTIFICATE_VERIFY_FAILED" in result.body.decode()


async def test_connection_refused_is_502(origin: HTTPOrigin) -> None:
    with trio.socket.socket() as sock:  # a port with nothing listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(
                env.agent, "POST", f"http://127.0.0.1:{port}/", [], [b"body that is dropped"]
            )
    assert result.status == 502
    assert result.header("content-type") == "text/plain; charset=utf-8"
    assert result.header("x-fluidity-error") == f"connection to 127.0.0.1:{port} refused"
    assert result.body == f"connection to 127.0.0.1:{port} refused\n".encode()


async def test_an_error_answer_arrives_while_the_agent_is_still_uploading() -> None:
    endless = itertools.repeat(b"x" * 10_000)
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "POST", "http://metadata.test/", [], endless)
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0  # the handler stopped reading when the agent reset
    assert result.status == 403


async def test_unknown_host_is_502_without_a_dns_query() -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", "http://no-such-host.test/")
    assert result.status == 502
    assert result.header("x-fluidity-error") == "could not resolve host no-such-host.test"


async def test_an_origin_that_never_answers_is_504(
    origin: HTTPOrigin, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(100):
        async with serving(read_timeout=30) as env:
            start = trio.current_time()
            result = await exchange(env.agent, "GET", origin.url("/hang"))
            waited = trio.current_time() - start
    assert result.status == 504
    assert "30 s" in result.body.decode()
    assert 30 <= waited < 31


async def test_loopback_is_refused_by_default(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving(EgressPolicy()) as env:
            result = await exchange(env.agent, "GET", origin.url("/echo"))
    assert (result.status, result.reason) == (403, b"Forbidden")
    assert result.header("x-fluidity-reason") == "egress-denied"
    assert result.header("x-fluidity-error") == (
        "destination 127.0.0.1 is not allowed by the egress policy (local, link-local and "
        "private addresses are refused unless egress_allow lists them); to reach it, add "
        "127.0.0.1/32 to the server's egress_allow (FLUIDITY_EGRESS_ALLOW)"
    )
    assert origin.connections == 0


async def test_a_private_destination_is_403_naming_egress_allow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connects: list[object] = []

    async def no_connect(candidate: object) -> trio.SocketStream:
        connects.append(candidate)  # a guard: no test sends traffic to a private address
        raise OSError("tests never connect to private addresses")

    monkeypatch.setattr(egress, "_connect", no_connect)
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", "http://10.1.2.3/?token=abc")
            ipv6 = await exchange(env.agent, "GET", "http://[fd00::1]:8080/")
    assert (result.status, ipv6.status) == (403, 403)
    assert "egress_allow" in result.body.decode()
    assert "egress_allow" in (ipv6.header("x-fluidity-error") or "")
    assert connects == []


async def test_a_name_resolving_to_a_denied_address_is_refused() -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", "http://metadata.test/latest/meta-data/")
    assert result.status == 403
    assert "metadata.test (169.254.169.254)" in result.body.decode()


async def test_a_bad_url_is_400() -> None:
    with trio.fail_after(10):
        async with serving() as env:
            result = await exchange(env.agent, "GET", "ftp://example.test/file")
    assert result.status == 400


async def test_an_origin_failing_after_the_head_resets_the_stream(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await env.agent.open_stream(
                Request(0, b"GET", origin.url("/truncate?n=100000").encode(), end_stream=True)
            )
            async with stream:
                reply = await stream.wait_reply()
                assert isinstance(reply, Response)
                assert reply.status == 200
                with pytest.raises(StreamReset) as caught:
                    await read_all(stream)
    assert caught.value.code == ErrorCode.UPSTREAM_ERROR


async def test_connections_to_the_origin_are_reused(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            for _ in range(3):
                result = await exchange(env.agent, "GET", origin.url("/echo"))
                assert result.status == 200
    assert origin.connections == 1


async def test_neither_query_strings_nor_credentials_are_logged(
    origin: HTTPOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        async with serving() as env:
            await exchange(env.agent, "GET", origin.url("/echo?token=s3cret"))
            await exchange(env.agent, "GET", "http://user:s3cret@127.0.0.1:1/x?token=s3cret")
    assert "s3cret" not in caplog.text
    # The access line (debug) and the failure (info) name the origin, nothing after it.
    assert f"GET http://127.0.0.1:{origin.port}: 200" in caplog.text
    assert "GET http://127.0.0.1:1: 502 connection to 127.0.0.1:1 refused" in caplog.text


async def test_a_post_on_a_dropped_keep_alive_connection_is_502_not_sent_twice() -> None:
    """The origin closes its reused connection as the request arrives: a GET is sent again on
    a new one, a POST is answered 502 (the origin may have acted on it)."""

    async def answer_once_then_drop(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(OK)
        await peer.read_head()  # and close

    with trio.fail_after(10):
        async with scripted_origin(answer_once_then_drop) as origin, serving() as env:
            assert (await exchange(env.agent, "GET", origin.url("/warm"))).status == 200
            post = await exchange(env.agent, "POST", origin.url("/order"))
            assert (await exchange(env.agent, "GET", origin.url("/again"))).status == 200
            get = await exchange(env.agent, "GET", origin.url("/retried"))
    assert post.status == 502
    assert "without answering" in post.body.decode()
    posts = [head for heads in origin.heads for head in heads if head.startswith(b"POST ")]
    assert len(posts) == 1
    assert get.status == 200
    retried = [head for heads in origin.heads for head in heads if b" /retried " in head]
    assert len(retried) == 2  # once on the dropped connection, once on a new one
