"""`fluidity certs`: the files it writes, their modes, and that the chain verifies."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fluidity import certs
from fluidity.cli import main

ALL_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
KEY_FILES = ("ca-key.pem", "server-key.pem", "client-key.pem")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_init_writes_all_files_and_says_what_next(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    code, out = run("certs", "init", "--dir", str(d))
    assert code == 0, out
    assert sorted(p.name for p in d.iterdir()) == sorted(ALL_FILES)
    for name in ALL_FILES:
        assert str(d / name) in out
    assert "Next steps" in out
    assert mode(d) == 0o700


def test_private_keys_are_mode_0600(tmp_path: Path) -> None:
    code, out = run("certs", "init", "--dir", str(tmp_path))
    assert code == 0, out
    for name in KEY_FILES:
        assert mode(tmp_path / name) == 0o600, name
    assert mode(tmp_path / "ca.pem") & 0o077 != 0o077  # certificates are public


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert run("certs", "init", "--dir", str(tmp_path))[0] == 0
    before = (tmp_path / "ca.pem").read_bytes()
    code, out = run("certs", "init", "--dir", str(tmp_path))
    assert code == 1
    assert "refusing to overwrite" in out
    assert "--force" in out
    assert (tmp_path / "ca.pem").read_bytes() == before

    code, out = run("certs", "init", "--dir", str(tmp_path), "--force")
    assert code == 0, out
    assert (tmp_path / "ca.pem").read_bytes() != before
    assert mode(tmp_path / "ca-key.pem") == 0o600


def test_init_refuses_when_only_one_file_exists(tmp_path: Path) -> None:
    (tmp_path / "client-key.pem").write_text("keep me")
    code, out = run("certs", "init", "--dir", str(tmp_path))
    assert code == 1
    assert "client-key.pem" in out
    assert not (tmp_path / "ca.pem").exists()  # nothing written


def test_server_certificate_names_the_fixed_server_name(tmp_path: Path) -> None:
    code, out = run(
        "certs",
        "init",
        "--dir",
        str(tmp_path),
        "--san",
        "tunnel.example.org",
        "--san",
        "203.0.113.7",
    )
    assert code == 0, out
    server = load(tmp_path / "server.pem")
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fluidity-server"
    names = sans(server)
    assert names.get_values_for_type(x509.DNSName) == ["fluidity-server", "tunnel.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.7")]


def test_custom_server_name(tmp_path: Path) -> None:
    code, out = run("certs", "init", "--dir", str(tmp_path), "--server-name", "tunnel.internal")
    assert code == 0, out
    assert sans(load(tmp_path / "server.pem")).get_values_for_type(x509.DNSName) == [
        "tunnel.internal"
    ]


def test_bad_san_is_refused(tmp_path: Path) -> None:
    code, out = run("certs", "init", "--dir", str(tmp_path), "--san", "not a name")
    assert code == 1
    assert "'not a name' is not a valid DNS name or IP address" in out


def test_usages_server_auth_and_client_auth_only(tmp_path: Path) -> None:
    assert run("certs", "init", "--dir", str(tmp_path))[0] == 0
    assert ekus(load(tmp_path / "server.pem")) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ekus(load(tmp_path / "client.pem")) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = load(tmp_path / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in ("server.pem", "client.pem"):
        assert (
            not load(tmp_path / leaf)
            .extensions.get_extension_for_class(x509.BasicConstraints)
            .value.ca
        )


def test_chain_verifies_for_server_name_and_client(tmp_path: Path) -> None:
    code, out = run("certs", "init", "--dir", str(tmp_path), "--client-name", "laptop")
    assert code == 0, out
    ca, server, client = (load(tmp_path / n) for n in ("ca.pem", "server.pem", "client.pem"))
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    store = Store([ca])

    chain = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("fluidity-server"))
    assert chain.verify(server, [])[0] == server
    wrong_name = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("example.com"))
    with pytest.raises(VerificationError):
        wrong_name.verify(server, [])

    verified = PolicyBuilder().store(store).build_client_verifier().verify(client, [])
    assert verified.chain[0] == client
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "laptop"
    # a client certificate cannot serve as the server's, nor the other way round
    server_verifier = (
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("fluidity-server"))
    )
    with pytest.raises(VerificationError):
        server_verifier.verify(client, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_client_verifier().verify(server, [])


def test_certs_client_issues_another_client(tmp_path: Path) -> None:
    assert run("certs", "init", "--dir", str(tmp_path))[0] == 0
    code, out = run("certs", "client", "phone", "--dir", str(tmp_path))
    assert code == 0, out
    cert_path, key_path = tmp_path / "client-phone.pem", tmp_path / "client-phone-key.pem"
    assert str(cert_path) in out
    assert mode(key_path) == 0o600
    cert = load(cert_path)
    cert.verify_directly_issued_by(load(tmp_path / "ca.pem"))
    assert ekus(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "phone"

    code, out = run("certs", "client", "phone", "--dir", str(tmp_path))
    assert code == 1
    assert "refusing to overwrite" in out


def test_certs_client_without_ca_says_to_run_init(tmp_path: Path) -> None:
    code, out = run("certs", "client", "phone", "--dir", str(tmp_path))
    assert code == 1
    assert "fluidity certs init" in out


@pytest.mark.parametrize("name", ["../evil", "a b", "-x", ""])
def test_certs_client_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    assert run("certs", "init", "--dir", str(tmp_path))[0] == 0
    code, _ = run("certs", "client", name, "--dir", str(tmp_path))
    assert code != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ALL_FILES)


def test_days_sets_validity(tmp_path: Path) -> None:
    assert run("certs", "init", "--dir", str(tmp_path), "--days", "30")[0] == 0
    server = load(tmp_path / "server.pem")
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    ca = load(tmp_path / "ca.pem")
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= certs.CA_MIN_DAYS
