"""The SOCKS5 server protocol on bytes: negotiation, authentication, requests, replies, and
what the client's bytes may not do (whole or one byte at a time)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluidity.agent.socks5 import (
    NEED_DATA,
    AddressType,
    AuthFailed,
    ConnectRequest,
    Refused,
    Reply,
    Socks5Server,
    SocksProtocolError,
)

NO_AUTH_GREETING = b"\x05\x01\x00"
BOTH_GREETING = b"\x05\x02\x00\x02"
USER_PASS_GREETING = b"\x05\x01\x02"
#: A success or failure reply: version, code, reserved, IPv4 0.0.0.0 port 0.
UNSPECIFIED = b"\x00\x01\x00\x00\x00\x00\x00\x00"


def connect_request(kind: int, address: bytes, port: int, command: int = 1) -> bytes:
    return bytes([5, command, 0, kind]) + address + struct.pack("!H", port)


def domain(name: bytes) -> bytes:
    return bytes([len(name)]) + name


def auth(user: bytes, password: bytes) -> bytes:
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


def feed(server: Socks5Server, data: bytes, *, bytewise: bool) -> list[object]:
    """Events produced while `data` arrives (whole, or one byte at a time)."""
    events: list[object] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        server.receive_data(piece)
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
            if not isinstance(event, ConnectRequest):
                return events
            break
    return events


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(
    ("address", "kind", "host"),
    [
        (domain(b"Origin.Test"), AddressType.DOMAIN, "origin.test"),
        (bytes([127, 0, 0, 1]), AddressType.IPV4, "127.0.0.1"),
        (bytes(15) + b"\x01", AddressType.IPV6, "::1"),
    ],
    ids=["domain", "ipv4", "ipv6"],
)
def test_connect_request_without_auth(
    address: bytes, kind: AddressType, host: str, bytewise: bool
) -> None:
    server = Socks5Server()
    events = feed(server, NO_AUTH_GREETING + connect_request(kind, address, 443), bytewise=bytewise)
    assert events == [ConnectRequest(host, 443, kind)]
    assert server.data_to_send() == b"\x05\x00"  # no authentication chosen
    server.reply(Reply.SUCCEEDED)
    assert server.data_to_send() == b"\x05\x00" + UNSPECIFIED
    assert server.state == "relay"


def test_bytes_sent_before_the_reply_are_kept_for_the_relay() -> None:
    server = Socks5Server()
    early = b"GET / HTTP/1.1\r\n\r\n"
    server.receive_data(NO_AUTH_GREETING + connect_request(1, bytes(4), 80) + early)
    assert isinstance(server.next_event(), ConnectRequest)
    server.reply(Reply.SUCCEEDED)
    assert server.trailing_data == early


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_username_password_accepted(bytewise: bool) -> None:
    server = Socks5Server((b"alice", b"s3cret"))
    data = BOTH_GREETING + auth(b"alice", b"s3cret") + connect_request(3, domain(b"a.test"), 22)
    assert feed(server, data, bytewise=bytewise) == [
        ConnectRequest("a.test", 22, AddressType.DOMAIN)
    ]
    assert server.data_to_send() == b"\x05\x02" + b"\x01\x00"


@pytest.mark.parametrize(
    ("user", "password"), [(b"alice", b"wrong"), (b"bob", b"s3cret"), (b"", b"")]
)
def test_wrong_credentials_fail_and_close(user: bytes, password: bytes) -> None:
    server = Socks5Server((b"alice", b"s3cret"))
    server.receive_data(USER_PASS_GREETING + auth(user, password) + connect_request(1, bytes(4), 1))
    event = server.next_event()
    assert event == AuthFailed("wrong user or password")
    assert server.data_to_send() == b"\x05\x02" + b"\x01\x01"  # status 1: failure
    assert server.state == "closed"
    assert server.next_event() is NEED_DATA  # the request after it is never read


def test_credentials_required_but_not_offered() -> None:
    server = Socks5Server((b"alice", b"s3cret"))
    server.receive_data(NO_AUTH_GREETING)
    event = server.next_event()
    assert isinstance(event, AuthFailed)
    assert "credentials are required" in event.reason
    assert server.data_to_send() == b"\x05\xff"  # no acceptable method


def test_without_auth_a_client_offering_only_credentials_is_accepted() -> None:
    server = Socks5Server()
    request = connect_request(1, bytes(4), 80)
    server.receive_data(USER_PASS_GREETING + auth(b"any", b"thing") + request)
    assert isinstance(server.next_event(), ConnectRequest)
    assert server.data_to_send() == b"\x05\x02\x01\x00"


def test_no_auth_is_preferred_when_auth_is_off() -> None:
    server = Socks5Server()
    server.receive_data(BOTH_GREETING)
    assert server.next_event() is NEED_DATA
    assert server.data_to_send() == b"\x05\x00"


@pytest.mark.parametrize(("command", "name"), [(2, "BIND"), (3, "UDP ASSOCIATE"), (9, "unknown")])
def test_other_commands_are_not_supported(command: int, name: str) -> None:
    server = Socks5Server()
    server.receive_data(NO_AUTH_GREETING + connect_request(1, bytes(4), 80, command))
    event = server.next_event()
    assert isinstance(event, Refused)
    assert name in event.reason
    assert server.data_to_send() == b"\x05\x00" + b"\x05\x07" + UNSPECIFIED
    assert server.state == "closed"


def test_unknown_address_type_is_refused() -> None:
    server = Socks5Server()
    server.receive_data(NO_AUTH_GREETING + b"\x05\x01\x00\x07" + bytes(8))
    assert isinstance(server.next_event(), Refused)
    assert server.data_to_send() == b"\x05\x00" + b"\x05\x08" + UNSPECIFIED


@pytest.mark.parametrize(
    "name", [b"bad name", b"new\nline", b"caf\xc3\xa9.test", b"", b"x" * 254], ids=repr
)
def test_names_that_are_not_dns_names_are_refused(name: bytes) -> None:
    server = Socks5Server()
    server.receive_data(NO_AUTH_GREETING + connect_request(3, domain(name), 80))
    event = server.next_event()
    assert isinstance(event, Refused)
    assert event.reason == "the host name is not a DNS name"  # and never the name itself
    assert server.data_to_send()[2:4] == b"\x05\x01"


def test_port_zero_is_refused() -> None:
    server = Socks5Server()
    server.receive_data(NO_AUTH_GREETING + connect_request(1, bytes(4), 0))
    assert isinstance(server.next_event(), Refused)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", "SOCKS4 is not supported"),
        (b"GET / HTTP/1.1\r\n", "not a SOCKS5 greeting"),
        (b"\x05\x00", "no authentication method"),
        (NO_AUTH_GREETING + b"\x04\x01\x00\x01", "malformed request"),
        (USER_PASS_GREETING + b"\x05\x01", "malformed username/password"),
    ],
)
def test_malformed_bytes_are_a_protocol_error(data: bytes, message: str) -> None:
    server = Socks5Server((b"u", b"p")) if data.startswith(USER_PASS_GREETING) else Socks5Server()
    server.receive_data(data)
    with pytest.raises(SocksProtocolError, match=message):
        server.next_event()
    assert server.state == "closed"


@pytest.mark.parametrize("code", [Reply.NOT_ALLOWED, Reply.CONNECTION_REFUSED, Reply.TTL_EXPIRED])
def test_a_failure_reply_closes(code: Reply) -> None:
    server = Socks5Server()
    server.receive_data(NO_AUTH_GREETING + connect_request(1, bytes(4), 80))
    assert isinstance(server.next_event(), ConnectRequest)
    server.data_to_send()
    server.reply(code)
    assert server.data_to_send() == bytes([5, code]) + UNSPECIFIED
    assert server.state == "closed"
    with pytest.raises(RuntimeError, match="no request to answer"):
        server.reply(Reply.SUCCEEDED)


@given(st.binary(max_size=300))
def test_any_bytes_give_events_or_the_protocol_error(data: bytes) -> None:
    """Whatever a client sends, only SocksProtocolError escapes, and the output stays small."""
    server = Socks5Server((b"user", b"pass"))
    server.receive_data(data)
    try:
        for _ in range(4):
            server.next_event()
    except SocksProtocolError:
        pass
    assert len(server.data_to_send()) <= 2 + 2 + 10
