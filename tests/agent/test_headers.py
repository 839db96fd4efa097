"""Proxy header rules, on plain header lists."""

from __future__ import annotations

import pytest

from fluidity.agent import headers as hdr
from fluidity.agent.headers import BadRequest


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [
        (b"Host", b"ignored.example"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"Basic eDp5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Expect", b"100-continue"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Accept", b"*/*"),
    ]
    target = hdr.parse_target(b"http://example.com:8080/p?q=1")
    out = hdr.request_headers(headers, target)
    names = [n.lower() for n, _ in out]
    assert out[0] == (b"host", b"example.com:8080")
    assert names.count(b"host") == 1
    for gone in (b"connection", b"x-secret", b"keep-alive", b"proxy-connection", b"te",
                 b"trailer", b"upgrade", b"proxy-authorization", b"transfer-encoding",
                 b"expect"):  # fmt: skip
        assert gone not in names
    assert [v for n, v in out if n == b"Set-Cookie"] == [b"a=1", b"b=2"]
    assert (b"via", hdr.VIA) in out


def test_via_is_appended_to_an_existing_via() -> None:
    out = hdr.response_headers([(b"Via", b"1.1 squid"), (b"Content-Length", b"3")])
    assert (b"Via", b"1.1 squid, 1.1 fluidity") in out
    assert (b"Content-Length", b"3") in out


def test_response_transfer_encoding_is_left_to_h11() -> None:
    out = hdr.response_headers([(b"Transfer-Encoding", b"chunked"), (b"Content-Encoding", b"gzip")])
    assert (b"Transfer-Encoding", b"chunked") not in out
    assert (b"Content-Encoding", b"gzip") in out


def test_both_length_and_chunked_is_refused() -> None:
    with pytest.raises(BadRequest, match="both Content-Length and Transfer-Encoding"):
        hdr.check_framing([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")])
    hdr.check_framing([(b"Content-Length", b"5")])


@pytest.mark.parametrize(
    ("target", "url", "host", "port"),
    [
        (b"http://Example.com/", b"http://example.com/", "example.com", 80),
        (b"http://example.com", b"http://example.com/", "example.com", 80),
        (b"http://example.com:81/a?b=c", b"http://example.com:81/a?b=c", "example.com", 81),
        (b"https://[::1]:8443/x", b"https://[::1]:8443/x", "::1", 8443),
    ],
)
def test_parse_target(target: bytes, url: bytes, host: str, port: int) -> None:
    parsed = hdr.parse_target(target)
    assert (parsed.url, parsed.host, parsed.port) == (url, host, port)


@pytest.mark.parametrize(
    "target",
    [b"ftp://example.com/", b"http:///nohost", b"http://u:p@example.com/", b"http://e.com:99999/"],
)
def test_bad_targets_are_refused(target: bytes) -> None:
    with pytest.raises(BadRequest):
        hdr.parse_target(target)


def test_websocket_targets_accept_http_and_ws_schemes() -> None:
    assert hdr.parse_target(b"http://e.com/ws", websocket=True).url == b"ws://e.com/ws"
    assert hdr.parse_target(b"wss://e.com/ws", websocket=True).url == b"wss://e.com/ws"
    with pytest.raises(BadRequest):
        hdr.parse_target(b"ws://e.com/ws")


@pytest.mark.parametrize(
    ("target", "expected"),
    [(b"example.com:443", ("example.com", 443)), (b"[::1]:8443", ("::1", 8443))],
)
def test_parse_authority(target: bytes, expected: tuple[str, int]) -> None:
    assert hdr.parse_authority(target) == expected


@pytest.mark.parametrize(
    "target",
    [b"example.com", b"::1:443", b"e.com:0", b"e.com:x", b":80", b"h" * 254 + b":443"],
)
def test_bad_authorities_are_refused(target: bytes) -> None:
    with pytest.raises(BadRequest):
        hdr.parse_authority(target)


def test_refusals_do_not_repeat_the_target() -> None:
    with pytest.raises(BadRequest) as info:
        hdr.parse_target(b"secret-scheme://example.com/")
    assert "secret" not in str(info.value)
    assert "http, https" in str(info.value)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM.:8080", "example.com"),
        (b"127.0.0.1:80", "127.0.0.1"),
        (b"[::1]", "::1"),
        (b"[::1]:8080", "::1"),
        (b"localhost", "localhost"),
        (b"[::1]x", None),
        (b"[::1", None),
        (b"host:port", None),
        (b"", None),
        (b"\xff", None),
    ],
)
def test_host_name(value: bytes, name: str | None) -> None:
    assert hdr.host_name(value) == name


def test_websocket_detection_and_headers() -> None:
    headers = [
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"k"),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Protocol", b"chat, superchat"),
        (b"Origin", b"http://e.com"),
    ]
    assert hdr.is_websocket_upgrade(headers)
    assert not hdr.is_websocket_upgrade([(b"Upgrade", b"websocket")])
    assert hdr.subprotocols(headers) == ("chat", "superchat")
    target = hdr.parse_target(b"ws://e.com/", websocket=True)
    names = {n.lower() for n, _ in hdr.websocket_headers(headers, target)}
    assert names == {b"origin", b"via"}


def test_has_body() -> None:
    assert hdr.has_body([(b"Transfer-Encoding", b"chunked")])
    assert hdr.has_body([(b"Content-Length", b"3")])
    assert not hdr.has_body([(b"Content-Length", b"0")])
    assert not hdr.has_body([])
