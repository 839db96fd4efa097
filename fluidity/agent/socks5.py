"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), server side, sans-I/O.

h11's shape: `receive_data(bytes)` in, `next_event()` out (`NEED_DATA` while a message is
incomplete), `data_to_send()` for what to write; no socket, so every rule is tested on bytes.
The connection answers the method negotiation and the authentication itself and hands the
application one `ConnectRequest`, which it answers with `reply()`; after a successful reply
the connection carries raw bytes (`trailing_data` is what the client sent early).

Only CONNECT is served (BIND and UDP ASSOCIATE get "command not supported"): the tunnel
carries TCP streams. A domain name is passed on as a name (socks5h): the server resolves it,
as it does for HTTP.

socksio, the sans-I/O SOCKS library in this style, was the first choice, but it implements the
client side only (its `SOCKS5Connection` sends requests and parses replies, with no server
role) and has had no release since 2020; the server side is three short messages, so they are
parsed here.

Errors: `SocksProtocolError` is the client's (malformed bytes; its message quotes none of
them); the connection is dead after it and should be closed without an answer.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
import struct

import attrs

__all__ = [
    "NEED_DATA",
    "AddressType",
    "AuthFailed",
    "ConnectRequest",
    "Refused",
    "Reply",
    "Socks5Server",
    "SocksProtocolError",
]

VERSION = 5
AUTH_VERSION = 1


class Method(enum.IntEnum):
    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """Reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksProtocolError(Exception):
    """The client broke the protocol; the message says how, in words safe to log."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@attrs.frozen
class ConnectRequest:
    """The client asks for a TCP connection to host:port; answer with `reply()`."""

    #: A name (lower case) or an address as text (IPv6 without brackets).
    host: str
    port: int
    address_type: AddressType


@attrs.frozen
class AuthFailed:
    """The credentials were wrong (or none were offered while required); the failure answer is
    queued and the connection must close once it is sent."""

    reason: str


@attrs.frozen
class Refused:
    """A request the agent does not serve (another command, an unknown address type, a bad
    name); the reply is queued and the connection must close once it is sent."""

    reason: str


Event = ConnectRequest | AuthFailed | Refused


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    #: The request was handed out; the application owes a reply.
    REPLY = "reply"
    #: Replied with success: raw bytes from now on.
    RELAY = "relay"
    #: Refused or failed: nothing more is read.
    CLOSED = "closed"


#: The host names passed on: DNS characters only (the server re-checks, but no control bytes or
#: spaces may reach a log line or the wire from here).
_HOST_NAME = re.compile(r"[a-z0-9_.-]{1,253}")
#: Success replies name no bound address: the connection starts at the server, not here.
_UNSPECIFIED = struct.pack("!B4sH", AddressType.IPV4, bytes(4), 0)


class Socks5Server:
    """One SOCKS5 client connection, from the greeting to the reply.

    `credentials` is (user, password) when authentication is required. Without it, a client
    that offers only username/password is accepted whatever it sends (nothing is checked).
    """

    def __init__(self, credentials: tuple[bytes, bytes] | None = None) -> None:
        self._credentials = credentials
        self._state = _State.GREETING
        self._buffer = bytearray()
        self._out = bytearray()

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def trailing_data(self) -> bytes:
        """Bytes received past the request (a client may send before the reply)."""
        return bytes(self._buffer)

    def receive_data(self, data: bytes) -> None:
        if self._state is _State.CLOSED:
            return
        self._buffer += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | _NeedData:
        """Parse what has arrived; NEED_DATA until a message is complete.

        Raises SocksProtocolError for bytes that are not SOCKS5 (the state is then closed).
        """
        try:
            while True:
                if self._state is _State.GREETING:
                    stop = self._greeting()
                elif self._state is _State.AUTH:
                    stop = self._auth()
                elif self._state is _State.REQUEST:
                    return self._request()
                else:
                    return NEED_DATA
                if stop is not None:
                    return stop
        except SocksProtocolError:
            self._state = _State.CLOSED
            self._buffer.clear()
            raise

    def reply(self, code: Reply) -> None:
        """Answer the ConnectRequest: success starts the relay, anything else ends it."""
        if self._state is not _State.REPLY:
            raise RuntimeError(f"reply() in state {self._state.value}: no request to answer")
        self._out += bytes([VERSION, code, 0]) + _UNSPECIFIED
        self._state = _State.RELAY if code is Reply.SUCCEEDED else _State.CLOSED

    # -- the messages --------------------------------------------------------------------------

    def _greeting(self) -> AuthFailed | _NeedData | None:
        """Choose the method; None when the next message may follow at once."""
        buf = self._buffer
        self._check_version(buf)
        if len(buf) < 2:
            return NEED_DATA
        count = buf[1]
        if count == 0:
            raise SocksProtocolError("the greeting offers no authentication method")
        if len(buf) < 2 + count:
            return NEED_DATA
        methods = set(buf[2 : 2 + count])
        del buf[: 2 + count]
        if self._credentials is None and Method.NO_AUTH in methods:
            chosen = Method.NO_AUTH
            self._state = _State.REQUEST
        elif Method.USERNAME_PASSWORD in methods:
            chosen = Method.USERNAME_PASSWORD
            self._state = _State.AUTH
        else:
            self._state = _State.CLOSED
            buf.clear()
            self._out += bytes([VERSION, Method.NO_ACCEPTABLE])
            return AuthFailed(self._no_method())
        self._out += bytes([VERSION, chosen])
        return None

    def _no_method(self) -> str:
        if self._credentials is not None:
            return "credentials are required and the client offered no username/password"
        return "the client offered neither no-authentication nor username/password"

    def _check_version(self, buf: bytearray) -> None:
        if buf and buf[0] != VERSION:
            if buf[0] == 4:
                raise SocksProtocolError("SOCKS4 is not supported (use SOCKS5)")
            raise SocksProtocolError("not a SOCKS5 greeting")

    def _auth(self) -> AuthFailed | _NeedData | None:
        buf = self._buffer
        if buf and buf[0] != AUTH_VERSION:
            raise SocksProtocolError("malformed username/password request (RFC 1929)")
        if len(buf) < 2:
            return NEED_DATA
        user_end = 2 + buf[1]
        if len(buf) < user_end + 1:
            return NEED_DATA
        end = user_end + 1 + buf[user_end]
        if len(buf) < end:
            return NEED_DATA
        user, password = bytes(buf[2:user_end]), bytes(buf[user_end + 1 : end])
        del buf[:end]
        expected = self._credentials
        ok = expected is None or (
            hmac.compare_digest(user, expected[0]) & hmac.compare_digest(password, expected[1])
        )
        self._out += bytes([AUTH_VERSION, 0 if ok else 1])
        if ok:
            self._state = _State.REQUEST
            return None
        self._state = _State.CLOSED
        buf.clear()
        return AuthFailed("wrong user or password")

    def _request(self) -> Event | _NeedData:
        buf = self._buffer
        if buf and buf[0] != VERSION:
            raise SocksProtocolError("malformed request (not SOCKS5)")
        if len(buf) < 5:
            return NEED_DATA
        command, kind = buf[1], buf[3]
        if kind == AddressType.IPV4:
            size = 4
        elif kind == AddressType.IPV6:
            size = 16
        elif kind == AddressType.DOMAIN:
            size = 1 + buf[4]
        else:
            return self._refuse(Reply.ADDRESS_TYPE_NOT_SUPPORTED, "unknown address type")
        end = 4 + size + 2
        if len(buf) < end:
            return NEED_DATA
        raw = bytes(buf[4 : 4 + size])
        (port,) = struct.unpack("!H", buf[4 + size : end])
        del buf[:end]
        self._state = _State.REPLY
        if command != Command.CONNECT:
            name = Command(command).name if command in Command._value2member_map_ else "unknown"
            return self._refuse(
                Reply.COMMAND_NOT_SUPPORTED,
                f"command {name.replace('_', ' ')} ({command}) is not supported: only CONNECT",
            )
        if kind == AddressType.IPV4:
            host = str(ipaddress.IPv4Address(raw))
        elif kind == AddressType.IPV6:
            host = str(ipaddress.IPv6Address(raw))
        else:
            host = raw[1:].decode("ascii", "replace").lower()
            if not _HOST_NAME.fullmatch(host):
                return self._refuse(Reply.GENERAL_FAILURE, "the host name is not a DNS name")
        if port == 0:
            return self._refuse(Reply.GENERAL_FAILURE, "port 0 is not a destination")
        return ConnectRequest(host, port, AddressType(kind))

    def _refuse(self, code: Reply, reason: str) -> Refused:
        self._state = _State.REPLY
        self.reply(code)
        self._buffer.clear()
        return Refused(reason)
