"""TLS 1.3 mutual authentication between `server_ssl_context` and `client_ssl_context`.

Handshakes run over `trio.testing.memory_stream_pair` with `trio.SSLStream`, using the
certificates `fluidity certs init` writes.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization

from fluidity import certs
from fluidity.tls import PEMError, client_ssl_context, load_pem, server_ssl_context
from tests.support.pki import Pki


@attrs.define
class Outcome:
    """What each side saw: None on success, else the exception that broke it."""

    client: BaseException | None = None
    server: BaseException | None = None
    server_stream: trio.SSLStream[Any] | None = None

    def ok(self) -> bool:
        return self.client is None and self.server is None

    def reasons(self) -> str:
        """The OpenSSL reasons behind the failures, for matching."""
        out = []
        for exc in (self.client, self.server):
            cause = exc.__cause__ if exc is not None else None
            if isinstance(cause, ssl.SSLError):
                out.append(f"{cause.reason} {cause}")
        return " | ".join(out)


async def exchange(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "fluidity-server"
) -> Outcome:
    """Handshake, then one ping/pong (in TLS 1.3 the client learns of a rejected certificate
    only when it next reads)."""
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)
    client = trio.SSLStream(client_raw, client_ctx, server_hostname=server_hostname)
    outcome = Outcome(server_stream=server)

    async def server_side() -> None:
        try:
            await server.do_handshake()
            assert await server.receive_some() == b"ping"
            await server.send_all(b"pong")
        except trio.BrokenResourceError as exc:
            outcome.server = exc
            await server_raw.aclose()

    async def client_side() -> None:
        try:
            await client.do_handshake()
            await client.send_all(b"ping")
            assert await client.receive_some() == b"pong"
        except trio.BrokenResourceError as exc:
            outcome.client = exc
            await client_raw.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            nursery.start_soon(client_side)
    return outcome


def server_ctx(pki: Pki) -> ssl.SSLContext:
    return server_ssl_context(*pki.server, pki.ca)


def client_ctx(pki: Pki) -> ssl.SSLContext:
    return client_ssl_context(*pki.client, pki.ca)


async def test_mutual_tls13_handshake_succeeds(pki: Pki) -> None:
    outcome = await exchange(server_ctx(pki), client_ctx(pki))
    assert outcome.ok(), outcome.reasons()
    server = outcome.server_stream
    assert server is not None
    assert server.version() == "TLSv1.3"
    peer = server.getpeercert()
    assert peer is not None
    assert peer["subject"] == ((("commonName", certs.DEFAULT_CLIENT_NAME),),)


async def test_contexts_from_pem_text_work(pki: Pki) -> None:
    def text(path: str) -> str:
        return Path(path).read_text()

    server = server_ssl_context(text(pki.server[0]), text(pki.server[1]), text(pki.ca))
    client = client_ssl_context(text(pki.client[0]), text(pki.client[1]), text(pki.ca))
    assert (await exchange(server, client)).ok()


async def test_client_cert_from_another_ca_is_rejected(pki: Pki) -> None:
    other_ca = certs.create_ca("Someone else's CA")
    stranger = certs.issue_client_cert(other_ca)
    client = client_ssl_context(stranger.cert_pem.decode(), stranger.key_pem.decode(), pki.ca)
    outcome = await exchange(server_ctx(pki), client)
    assert outcome.server is not None
    assert outcome.client is not None
    assert "unable to get local issuer certificate" in outcome.reasons()


async def test_missing_client_cert_is_rejected(pki: Pki) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki.ca)
    outcome = await exchange(server_ctx(pki), client)
    assert outcome.server is not None
    assert outcome.client is not None
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in outcome.reasons()


async def test_tls12_client_is_rejected(pki: Pki) -> None:
    client = client_ctx(pki)
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = await exchange(server_ctx(pki), client)
    assert outcome.server is not None
    assert outcome.client is not None
    assert "UNSUPPORTED_PROTOCOL" in outcome.reasons()


async def test_tls12_server_is_rejected_by_the_client(pki: Pki) -> None:
    server = server_ctx(pki)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = await exchange(server, client_ctx(pki))
    assert not outcome.ok()


async def test_client_checks_the_server_name(pki: Pki) -> None:
    outcome = await exchange(server_ctx(pki), client_ctx(pki), server_hostname="other-server")
    assert outcome.client is not None
    assert "Hostname mismatch" in outcome.reasons()


async def test_server_cert_from_another_ca_is_rejected_by_the_client(pki: Pki) -> None:
    other_ca = certs.create_ca("Impostor CA")
    impostor = certs.issue_server_cert(other_ca)
    server = server_ssl_context(impostor.cert_pem, impostor.key_pem, pki.ca)
    outcome = await exchange(server, client_ctx(pki))
    assert outcome.client is not None
    assert "unable to get local issuer certificate" in outcome.reasons()


async def test_server_certificate_cannot_act_as_client(pki: Pki) -> None:
    client = client_ssl_context(*pki.server, pki.ca)  # serverAuth only
    outcome = await exchange(server_ctx(pki), client)
    assert outcome.server is not None
    assert "unsuitable certificate purpose" in outcome.reasons()


def test_contexts_are_tls13_only_and_trust_only_our_ca(pki: Pki) -> None:
    for ctx in (server_ctx(pki), client_ctx(pki)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.cert_store_stats()["x509_ca"] == 1
    assert client_ctx(pki).check_hostname


def test_pem_text_goes_through_a_private_temporary_file_that_is_removed(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    modes = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, *args: Any, **kwargs: Any) -> None:
        modes.append(stat.S_IMODE(os.stat(certfile).st_mode))
        original(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    key_text = Path(pki.client[1]).read_text()
    client_ssl_context(Path(pki.client[0]).read_text(), key_text, Path(pki.ca).read_text())
    assert modes == [0o600]
    assert list(tmp_path.iterdir()) == []


def test_mismatched_key_is_a_clear_error(pki: Pki) -> None:
    with pytest.raises(PEMError, match="client certificate and private key") as info:
        client_ssl_context(pki.client[0], pki.server[1], pki.ca)
    assert "PRIVATE KEY" not in str(info.value)


def test_encrypted_key_is_refused_without_prompting(pki: Pki) -> None:
    key = serialization.load_pem_private_key(Path(pki.client[1]).read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(PEMError, match="encrypted"):
        client_ssl_context(pki.client[0], encrypted.decode(), pki.ca)


class TestLoadPem:
    def test_path_and_text_give_the_same_bytes(self, pki: Pki) -> None:
        data = Path(pki.ca).read_bytes()
        assert load_pem(pki.ca, "ca_cert") == data
        assert load_pem(data.decode(), "ca_cert") == data

    def test_escaped_newlines_are_restored(self, pki: Pki) -> None:
        data = Path(pki.ca).read_text()
        assert load_pem(data.replace("\n", "\\n"), "ca_cert").decode() == data

    def test_missing_file_names_what_and_where(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope.pem"
        with pytest.raises(PEMError, match=r"ca_cert: file .*nope\.pem.* does not exist"):
            load_pem(str(missing), "ca_cert")

    def test_not_pem(self, tmp_path: Path) -> None:
        junk = tmp_path / "junk.pem"
        junk.write_text("hello")
        with pytest.raises(PEMError, match=r"client_key: file .*junk\.pem.* is not PEM"):
            load_pem(str(junk), "client_key")

    def test_directory(self, tmp_path: Path) -> None:
        with pytest.raises(PEMError, match="is a directory"):
            load_pem(str(tmp_path) + "/", "ca_cert")

    def test_empty(self) -> None:
        with pytest.raises(PEMError, match="ca_cert: empty"):
            load_pem("  ", "ca_cert")

    def test_secret_looking_value_is_not_echoed(self) -> None:
        secret = "MHcCAQEEIBkVx0pQ9x/3Hn+ZyY2ZkUuZ8s8z1vJ9uOq3oPzN1u6aoAoGCCqGSM49"
        with pytest.raises(PEMError) as info:
            load_pem(secret, "client_key")
        assert secret not in str(info.value)
        assert "client_key" in str(info.value)


def test_swapped_certificate_and_key_are_caught(pki: Pki) -> None:
    with pytest.raises(PEMError, match="no CERTIFICATE block"):
        server_ssl_context(pki.server[1], pki.server[0], pki.ca)
