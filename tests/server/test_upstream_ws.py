"""WebSocket streams through the real handler to a trio-websocket echo origin."""

from __future__ import annotations

import json

import trio
import trio.testing

from fluidity.protocol import WebSocketClose
from fluidity.server.egress import EgressPolicy
from tests.server.harness import ack_of, open_websocket, receive_message, serving
from tests.support.origins import HTTPOrigin, WebSocketOrigin, websocket_origin
from tests.support.pki import TestTLS

MB = 1024 * 1024


async def test_text_and_binary_messages_echo(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url("/chat"))
            ack = await ack_of(stream)
            assert (ack.status, ack.subprotocol) == (101, None)
            await stream.send_ws("héllo".encode(), binary=False)
            assert await receive_message(stream) == (False, "héllo".encode())
            await stream.send_ws(b"\x00\x01\xff", binary=True)
            assert await receive_message(stream) == (True, b"\x00\x01\xff")
            await stream.send_ws(b"", binary=True)
            assert await receive_message(stream) == (True, b"")
            await stream.send_ws_close(1000, "done")
            close = await receive_message(stream)
    assert isinstance(close, WebSocketClose)
    assert close.code == 1000
    assert await ws_origin.wait_closes(1) == [(1000, "done")]


async def test_fragments_from_the_tunnel_are_joined(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            await stream.send_ws(b"frag", binary=False, fin=False)
            await stream.send_ws(b"ment", binary=False, fin=False)
            await stream.send_ws(b"ed", binary=False, fin=True)
            assert await receive_message(stream) == (False, b"fragmented")
            await stream.send_ws_close()


async def test_a_one_megabyte_message_both_ways(ws_origin: WebSocketOrigin) -> None:
    payload = bytes(range(256)) * (4 * 1024)  # 1 MiB
    with trio.fail_after(15):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            await stream.send_ws(payload, binary=True)  # fragmented by credit and frame size
            assert await receive_message(stream) == (True, payload)
            await stream.send_ws_close()


async def test_the_origins_subprotocol_choice_is_reported(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(
                env.agent, ws_origin.url(), subprotocols=("chat.v9", "chat.v1")
            )
            ack = await ack_of(stream)
            await stream.send_ws_close()
    assert (ack.status, ack.subprotocol) == (101, "chat.v1")


async def test_end_to_end_headers_reach_the_origin(ws_origin: WebSocketOrigin) -> None:
    sent = [("Cookie", "session=1"), ("Connection", "Upgrade"), ("Origin", "http://app.test")]
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url(), headers=sent)
            await ack_of(stream)
            await stream.send_ws(b"headers?", binary=False)
            message = await receive_message(stream)
            await stream.send_ws_close()
    assert isinstance(message, tuple)
    headers = [(name.lower(), value) for name, value in json.loads(message[1])]
    assert ("cookie", "session=1") in headers
    assert ("origin", "http://app.test") in headers
    names = [name for name, _ in headers]
    assert names.count("connection") == 1  # trio-websocket's own, not a second one


async def test_origin_close_code_and_reason_reach_the_agent(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            await stream.send_ws(b"close 4001 bye now", binary=False)
            close = await receive_message(stream)
            assert isinstance(close, WebSocketClose)
            await stream.send_ws_close(close.code, close.reason)  # the agent's echo
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert (close.code, close.reason) == (4001, "bye now")


async def test_agent_close_code_reaches_the_origin(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            await stream.send_ws_close(4002, "client leaving")
            echo = await receive_message(stream)
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0
    assert isinstance(echo, WebSocketClose)
    assert echo.code == 4002
    assert await ws_origin.wait_closes(1) == [(4002, "client leaving")]


async def test_an_agent_reset_closes_the_origin_with_1001(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            stream.reset()
            assert await ws_origin.wait_closes(1) == [(1001, None)]
            await trio.testing.wait_all_tasks_blocked()
            assert env.activity.active == 0


async def test_a_message_over_the_limit_closes_with_1009(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving(max_ws_message=64 * 1024) as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            await stream.send_ws(b"x" * (64 * 1024 + 1), binary=True)
            close = await receive_message(stream)
            await stream.send_ws_close(1009)
    assert isinstance(close, WebSocketClose)
    assert close.code == 1009
    assert (await ws_origin.wait_closes(1))[0][0] == 1009


async def test_invalid_utf8_text_closes_with_1007(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url())
            await ack_of(stream)
            await stream.send_ws(b"\xff\xfe", binary=False)
            close = await receive_message(stream)
            await stream.send_ws_close(1007)
    assert isinstance(close, WebSocketClose)
    assert close.code == 1007


async def test_a_refused_handshake_reports_the_origins_status(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, ws_origin.url("/reject"))
            ack = await ack_of(stream)
    assert ack.status == 403
    assert "403" in ack.error


async def test_a_plain_http_origin_refusing_the_upgrade_is_reported(origin: HTTPOrigin) -> None:
    with trio.fail_after(10):
        async with serving() as env:
            stream = await open_websocket(env.agent, f"ws://127.0.0.1:{origin.port}/status/404")
            ack = await ack_of(stream)
    assert ack.status == 404


async def test_refused_denied_and_unknown_destinations() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with serving() as env:
            refused = await ack_of(await open_websocket(env.agent, f"ws://127.0.0.1:{port}/"))
            unknown = await ack_of(await open_websocket(env.agent, "ws://nowhere.test/"))
            denied = await ack_of(await open_websocket(env.agent, "ws://metadata.test/"))
            bad = await ack_of(await open_websocket(env.agent, "ftp://x.test/"))
    assert (refused.status, refused.error) == (502, f"connection to 127.0.0.1:{port} refused")
    assert (unknown.status, unknown.error) == (502, "could not resolve host nowhere.test")
    assert denied.status == 403
    assert bad.status == 400


async def test_loopback_is_refused_by_default(ws_origin: WebSocketOrigin) -> None:
    with trio.fail_after(10):
        async with serving(EgressPolicy()) as env:
            ack = await ack_of(await open_websocket(env.agent, ws_origin.url()))
    assert ack.status == 403


async def test_wss_origin(tls: TestTLS) -> None:
    with trio.fail_after(10):
        async with websocket_origin(tls=tls.server) as origin, serving(verify=tls.client) as env:
            stream = await open_websocket(env.agent, f"wss://origin.test:{origin.port}/")
            ack = await ack_of(stream)
            assert ack.status == 101
            await stream.send_ws(b"secure", binary=False)
            assert await receive_message(stream) == (False, b"secure")
            await stream.send_ws_close()
            close = await receive_message(stream)
    assert isinstance(close, WebSocketClose)


async def test_wss_with_an_untrusted_certificate_is_502(tls: TestTLS) -> None:
    with trio.fail_after(10):
        async with websocket_origin(tls=tls.server) as origin, serving() as env:
            ack = await ack_of(await open_websocket(env.agent, origin.url()))
    assert ack.status == 502
    assert "CERTIFICATE_VERIFY_FAILED" in ack.error
