"""The local half of a WebSocket relay: wsproto towards the client, tunnel messages beyond.

The agent completes the client's handshake itself once the server's WebSocketAck says the
origin accepted; frames then travel as WebSocketMessage fragments (flow controlled) and close
codes as WebSocketClose. Pings from the client are answered here.
"""

from __future__ import annotations

import codecs
from typing import Any

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

from fluidity.protocol import WebSocketClose
from fluidity.tunnel import TunnelError, TunnelStream

READ_SIZE = 64 * 1024
#: Close codes that may not appear in a close frame; replaced when relaying.
_RESERVED = {1005: 1000, 1006: 1011, 1015: 1011}


def websocket_accept_headers(key: bytes, subprotocol: str | None) -> list[tuple[bytes, bytes]]:
    """The 101 response headers completing the client's handshake (no extensions)."""
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", generate_accept_token(key)),
    ]
    if subprotocol:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
    return headers


async def relay_websocket(
    client: trio.abc.Stream, stream: TunnelStream, trailing: bytes, send_lock: trio.Lock
) -> None:
    """Relay until both sides have closed (or either fails)."""
    ws = Connection(ConnectionType.SERVER)
    if trailing:
        ws.receive_data(trailing)

    async def to_client(data: bytes) -> None:
        if data:
            async with send_lock:
                await client.send_all(data)

    async def client_to_tunnel() -> None:
        while True:
            for event in ws.events():
                if isinstance(event, Message):
                    binary = isinstance(event, BytesMessage)
                    payload = bytes(event.data) if binary else event.data.encode("utf-8")
                    await stream.send_ws(payload, binary=binary, fin=event.message_finished)
                    del payload
                elif isinstance(event, Ping):
                    await to_client(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    code = _RESERVED.get(event.code, event.code)
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        await to_client(ws.send(event.response()))
                    # Either the client's close, or its answer to the origin's: relay it so
                    # the tunnel stream ends cleanly on both sides.
                    await stream.send_ws_close(code, event.reason or "")
                    return
                del event  # nothing of a message is kept while the next one is awaited
            if ws.state is ConnectionState.CLOSED:
                return
            data = await client.receive_some(READ_SIZE)
            ws.receive_data(bytes(data) if data else None)
            del data

    async def tunnel_to_client() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                message = await stream.receive_ws()
            except TunnelError:
                if ws.state is ConnectionState.OPEN:  # tell the client, not just drop it
                    await to_client(
                        ws.send(CloseConnection(1011, "the tunnel to the server failed"))
                    )
                raise
            if message is None:
                message = WebSocketClose(stream.stream_id, 1011, "tunnel stream ended")
            if isinstance(message, WebSocketClose):
                if ws.state is ConnectionState.OPEN:
                    code = _RESERVED.get(message.code, message.code)
                    await to_client(ws.send(CloseConnection(code, message.reason)))
                return
            if ws.state is not ConnectionState.OPEN:
                continue
            if message.binary:
                event: Message[Any] = BytesMessage(message.data, message_finished=message.fin)
            else:
                text = decoder.decode(message.data, final=message.fin)
                event = TextMessage(text, message_finished=message.fin)
                del text
            del message
            await to_client(ws.send(event))
            del event  # nothing of a message is kept while the next one is awaited

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_to_tunnel)
        nursery.start_soon(tunnel_to_client)
