"""Test helpers: an agent and a server `Connection` joined by two in-memory wires."""

from __future__ import annotations

from fluidity.protocol import (
    Connection,
    FrameDecoder,
    Hello,
    HelloAck,
    LinkState,
    Message,
    Role,
    Settings,
    WindowPolicy,
    encode_bytes,
)


class Link:
    """Moves bytes from one side's `send()` / `data_to_send()` output to the other's input.

    `send()` keeps the order a real writer must keep: frames the protocol queued itself go on
    the wire before the frame the application sends next.
    """

    def __init__(
        self,
        agent: Settings | None = None,
        server: Settings | None = None,
        server_policy: WindowPolicy | None = None,
    ) -> None:
        self.agent = Connection(Role.AGENT, agent)
        self.server = Connection(Role.SERVER, server, server_policy)
        self._wire: dict[Connection, bytearray] = {
            self.agent: bytearray(),
            self.server: bytearray(),
        }

    def peer(self, conn: Connection) -> Connection:
        return self.server if conn is self.agent else self.agent

    def send(self, conn: Connection, *messages: Message) -> None:
        for message in messages:
            self._flush(conn)
            self._wire[conn] += b"".join(conn.send(message))

    def _flush(self, conn: Connection) -> None:
        self._wire[conn] += b"".join(conn.data_to_send())

    def deliver(self, conn: Connection) -> list[Message]:
        """Hand everything `conn` wrote to its peer; return the events the peer reports."""
        self._flush(conn)
        data = bytes(self._wire[conn])
        self._wire[conn].clear()
        peer = self.peer(conn)
        peer.receive_data(data)
        return list(peer.events())

    def to_server(self) -> list[Message]:
        return self.deliver(self.agent)

    def to_agent(self) -> list[Message]:
        return self.deliver(self.server)

    def pending(self, conn: Connection) -> list[Message]:
        """What `conn` has written (or queued) but not yet delivered, decoded, in order."""
        self._flush(conn)
        decoder = FrameDecoder(16 * 1024 * 1024)
        decoder.receive_data(bytes(self._wire[conn]))
        return list(iter(decoder.next_message, None))

    @staticmethod
    def inject(conn: Connection, *messages: Message) -> None:
        """Feed raw frames to `conn` as if its peer sent them, bypassing the peer's checks."""
        conn.receive_data(b"".join(encode_bytes(m) for m in messages))

    @classmethod
    def open(
        cls,
        agent: Settings | None = None,
        server: Settings | None = None,
        server_policy: WindowPolicy | None = None,
    ) -> Link:
        """A link that has completed the handshake, with both wires empty."""
        link = cls(agent, server, server_policy)
        link.agent.initiate()
        [hello] = link.to_server()
        assert isinstance(hello, Hello)
        [ack] = link.to_agent()
        assert isinstance(ack, HelloAck)
        assert link.agent.state is link.server.state is LinkState.OPEN
        return link
