"""Link failures with the real processes: each mistake is named, with what to check.

Real certificates from `fluidity certs` (another CA, a wrong name, an expired one), real
ports (the server's health port, an HTTP server, a closed port): the agent classifies each
failed attempt, logs a mistake in the configuration at ERROR once, shows it in /healthz, and
fails a waiting request at once with the cause instead of making it wait.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluidity.processes import stop_process
from tests.support.pki import Pki, make_pki
from tests.support.processes import Running, agent_args, run_fluidity, server_args

from .helpers import SERVER_ENV


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA with its own server and client certificates."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))


def expired_cert(pki: Pki, directory: Path, *, client: bool = False) -> tuple[str, str]:
    """A server (or client) certificate from `pki`'s CA that expired yesterday:
    (cert path, key path)."""
    ca_cert = x509.load_pem_x509_certificate(Path(pki.path("ca.pem")).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(pki.path("ca-key.pem")).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = "fluidity-client" if client else "fluidity-server"
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(x509.ExtendedKeyUsage([usage]), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"expired-{name}.pem", directory / f"expired-{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@asynccontextmanager
async def agent_of(pki: Pki, port: int, workdir: Path, *extra: str) -> AsyncIterator[Running]:
    async with run_fluidity("fluidity.agent", agent_args(pki, port, *extra), workdir) as agent:
        try:
            yield agent
        finally:
            print(f"--- agent log ---\n{agent.log()}")


async def request_and_health(agent: Running) -> tuple[httpx2.Response, dict[str, Any]]:
    """A proxied request (it fails: the link cannot come up), then /healthz."""
    proxy = f"http://127.0.0.1:{agent.port}"
    async with httpx2.AsyncClient(proxy=proxy, trust_env=False, timeout=30) as http:
        with trio.fail_after(20):
            response = await http.get("http://origin.test/")
            for _ in range(2):  # more attempts: the cause is still logged once
                await http.get("http://origin.test/")
    async with httpx2.AsyncClient(trust_env=False) as http:
        health = (await http.get(f"{proxy}/healthz")).json()
    return response, health


def errors(agent: Running) -> list[str]:
    return [line for line in agent.log().splitlines() if " ERROR " in line]


@pytest.mark.parametrize(
    ("mistake", "cause", "words"),
    [
        ("server certificate from another CA", "server_certificate_untrusted", "ca_cert"),
        ("client certificate from another CA", "certificate_rejected", "client_cert"),
        ("wrong server_name", "server_name_mismatch", "server_name"),
        ("expired server certificate", "certificate_expired", "has expired"),
        ("server_port is the health port", "not_fluidity", "server_port"),
    ],
)
async def test_a_certificate_or_port_mistake_is_named_once_and_fails_requests_at_once(
    pki: Pki, other_pki: Pki, tmp_path: Path, mistake: str, cause: str, words: str
) -> None:
    extra: list[str] = []
    srv_extra: list[str] = []
    if mistake == "server certificate from another CA":
        extra = ["--ca-cert", other_pki.path("ca.pem")]
    elif mistake == "client certificate from another CA":
        extra = ["--client-cert", other_pki.path("client.pem"),
                 "--client-key", other_pki.path("client-key.pem")]  # fmt: skip
    elif mistake == "wrong server_name":
        extra = ["--server-name", "not-the-server"]
    elif mistake == "expired server certificate":
        cert, key = expired_cert(pki, tmp_path)
        srv_extra = ["--server-cert", cert, "--server-key", key]
    args = server_args(pki, *srv_extra)
    async with run_fluidity("fluidity.server", args, tmp_path, env=SERVER_ENV) as srv:
        port = srv.info["health_port"] if cause == "not_fluidity" else srv.port
        async with agent_of(pki, port, tmp_path, *extra) as agent:
            response, health = await request_and_health(agent)
    assert response.status_code == 502
    assert response.headers["x-fluidity-reason"] == "tunnel-unavailable"
    assert words in response.text, "the answer says what to check"
    assert health["tunnel"] == "down"
    assert health["failure"]["cause"] == cause
    assert health["failure"]["permanent"] is True
    assert words in health["failure"]["message"] + health["failure"]["hint"]
    logged = errors(agent)
    assert len(logged) == 1, "a permanent cause is logged at ERROR once"
    assert words in logged[0]
    if cause == "certificate_expired":  # the server said so at start, too
        assert "the certificate in server_cert" in srv.log()
        assert "expired on" in srv.log()


@asynccontextmanager
async def python_http_server(directory: Path) -> AsyncIterator[int]:
    """`python -m http.server` on a free loopback port (a real HTTP server: it answers a
    TLS ClientHello with 400, as nginx or any other would); yields its port."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=directory,
    )
    try:
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(10):
            while not (found := re.search(rb"port (\d+)", seen)):
                seen += await process.stdout.receive_some(1024)
        yield int(found.group(1))
    finally:
        await stop_process(process, 5)


async def test_an_http_server_on_server_port_is_not_a_fluidity_server(
    pki: Pki, tmp_path: Path
) -> None:
    async with python_http_server(tmp_path) as port, agent_of(pki, port, tmp_path) as agent:
        response, health = await request_and_health(agent)
    assert response.status_code == 502
    assert health["failure"]["cause"] == "not_fluidity"
    assert "not a Fluidity server" in response.text


async def test_a_closed_port_is_retried_quietly(pki: Pki, tmp_path: Path) -> None:
    with trio.socket.socket() as placeholder:  # bound, not listening: connections are refused
        await placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        wait = ("--request-wait-timeout", "1")
        async with agent_of(pki, port, tmp_path, *wait) as agent:
            response, health = await request_and_health(agent)
    assert response.status_code == 502
    assert "refused" in response.text
    assert health["failure"]["cause"] == "refused"
    assert health["failure"]["permanent"] is False
    assert errors(agent) == [], "a server that is not up (yet) is no configuration mistake"


async def test_an_expired_client_certificate_is_named_at_start_and_when_rejected(
    pki: Pki, tmp_path: Path
) -> None:
    cert, key = expired_cert(pki, tmp_path, client=True)
    async with (
        run_fluidity("fluidity.server", server_args(pki), tmp_path, env=SERVER_ENV) as srv,
        agent_of(pki, srv.port, tmp_path, "--client-cert", cert, "--client-key", key) as agent,
    ):
        response, health = await request_and_health(agent)
    assert response.status_code == 502
    assert health["failure"]["cause"] == "certificate_rejected"
    first, *rest = errors(agent)
    assert "the certificate in client_cert" in first
    assert "expired on" in first
    assert "fluidity certs client" in first, "it says how to get a new one"
    assert len(rest) == 1
    assert "rejected our client certificate" in rest[0]
