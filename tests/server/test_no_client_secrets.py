"""Nothing a client sent (query, headers, credentials) reaches the server's logs or error bodies.

Each request carries SECRET in its query, its Authorization and Proxy-Authorization headers and,
where it can, its URL's user info; the ones that fail do so in the ways that quote what they
failed on (h11 names an illegal header value in its message, for one).
"""

from __future__ import annotations

import logging

import pytest
import trio

from fluidity.protocol import Headers, Request, Response, WebSocketAck
from fluidity.server import egress
from fluidity.tunnel import Link
from tests.server.harness import Exchange, exchange, open_websocket, read_all, serving
from tests.support.origins import HTTPOrigin, WebSocketOrigin

SECRET = "s3cr3t-T0KEN-4242"
CREDENTIALS = [
    ("Authorization", f"Bearer {SECRET}"),
    ("Proxy-Authorization", f"Basic {SECRET}"),
    ("Cookie", f"session={SECRET}"),
]


async def raw_exchange(agent: Link, method: bytes, url: bytes, headers: Headers) -> Exchange:
    """Like `exchange`, with the head given as raw bytes (so it can be invalid HTTP)."""
    stream = await agent.open_stream(Request(0, method, url, headers, end_stream=True))
    async with stream:
        reply = await stream.wait_reply()
        assert isinstance(reply, Response)
        return Exchange(reply.status, reply.reason, reply.headers, await read_all(stream))


async def test_failed_requests_quote_nothing_the_client_sent(
    origin: HTTPOrigin,
    ws_origin: WebSocketOrigin,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_connect(candidate: object) -> object:
        raise AssertionError("tests never connect to private addresses")

    caplog.set_level(logging.INFO)
    query = f"?token={SECRET}"
    answers: list[Exchange] = []
    with trio.fail_after(20):
        async with serving(read_timeout=0.5) as env:
            agent = env.agent
            for url in (
                origin.url(f"/echo{query}"),  # fine
                f"http://user:{SECRET}@origin.test:{origin.port}/echo{query}",  # fine too
                f"http://user:{SECRET}@no-such-host.test/{query}",  # 502, DNS
                origin.url(f"/hang{query}"),  # 504
                f"http://user:{SECRET}@origin.test:1/{query}",  # 502, refused
            ):
                answers.append(await exchange(agent, "GET", url, CREDENTIALS))
            monkeypatch.setattr(egress, "_connect", no_connect)
            answers.append(await exchange(agent, "GET", f"http://10.9.9.9/{query}", CREDENTIALS))
            monkeypatch.undo()
            # Heads h11 refuses to send, naming the culprit in its message.
            bad_value = (b"Authorization", f"Bearer {SECRET}\x00".encode())
            bad_name = (f"X-{SECRET} bad".encode(), b"1")
            for header in (bad_value, bad_name):
                answers.append(
                    await raw_exchange(agent, b"GET", origin.url(query).encode(), (header,))
                )
            # WebSockets: a refused handshake, and a header wsproto refuses to send.
            ws_statuses = []
            for path, extra in (
                (f"/reject{query}", CREDENTIALS),
                (f"/{query}", [("Authorization", f"Bearer {SECRET}\x00")]),
            ):
                stream = await open_websocket(agent, ws_origin.url(path), headers=extra)
                ack = await stream.wait_reply()
                assert isinstance(ack, WebSocketAck)
                ws_statuses.append(ack.status)
                assert SECRET not in ack.error
                assert all(SECRET.encode() not in v for _, v in ack.headers)
    statuses = [answer.status for answer in answers]
    assert statuses == [200, 200, 502, 504, 502, 403, 400, 400]
    assert answers[-1].header("x-fluidity-error") == (
        "the request cannot be sent as HTTP/1.1: Illegal header name"
    )
    for answer in answers[2:]:
        assert SECRET.encode() not in answer.body, answer
        assert all(SECRET.encode() not in v for _, v in answer.headers), answer
    assert ws_statuses == [403, 400]
    failures = [r for r in caplog.records if r.name.startswith("fluidity.server")]
    assert len(failures) == 8  # each failure was logged (at INFO), and nothing crashed
    assert SECRET not in caplog.text  # messages, arguments and any traceback
