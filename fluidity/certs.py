"""A private CA and the certificates of the mutually authenticated link.

The server certificate names a fixed server name (default ``fluidity-server``) rather than an
address, because the server gets a new IP address every time its Fargate task starts: the
agent connects to whatever address it is given and checks this name. Extra names or IP
addresses can be added with `sans`. Client certificates carry the clientAuth usage only and
server certificates serverAuth only, so neither can stand in for the other.

Keys are EC P-256. Private key files are created with mode 0600 from the start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CLIENT_CERT",
    "CLIENT_KEY",
    "DEFAULT_CLIENT_NAME",
    "DEFAULT_DAYS",
    "DEFAULT_SERVER_NAME",
    "SERVER_CERT",
    "SERVER_KEY",
    "CertsError",
    "Issued",
    "add_client",
    "client_files",
    "create_ca",
    "init_dir",
    "issue_client_cert",
    "issue_server_cert",
    "parse_san",
]

DEFAULT_SERVER_NAME = "fluidity-server"
DEFAULT_CLIENT_NAME = "fluidity-client"
#: Validity of server and client certificates.
DEFAULT_DAYS = 825
#: The CA lives at least this long (or as long as the longest certificate asked for).
CA_MIN_DAYS = 3650

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client-key.pem"

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Certificates start slightly in the past so a peer with a lagging clock accepts them.
_BACKDATE = dt.timedelta(minutes=5)


class CertsError(Exception):
    """A certificate could not be made or written; the message says what to do."""


@attrs.frozen
class Issued:
    """A certificate and its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertsError("the CA key is not an EC key; recreate the CA with `certs init`")
        return key


def create_ca(common_name: str = "Fluidity private CA", *, days: int = CA_MIN_DAYS) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _issued(cert, key)


def issue_server_cert(
    ca: Issued,
    server_name: str = DEFAULT_SERVER_NAME,
    *,
    sans: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
) -> Issued:
    """A serverAuth certificate for `server_name` (its CN and first SAN) plus any extra `sans`."""
    names: list[x509.GeneralName] = [parse_san(server_name, dns_only=True)]
    for value in sans:
        general = parse_san(value)
        if general not in names:
            names.append(general)
    return _leaf(ca, server_name, names, ExtendedKeyUsageOID.SERVER_AUTH, days)


def issue_client_cert(
    ca: Issued, name: str = DEFAULT_CLIENT_NAME, *, days: int = DEFAULT_DAYS
) -> Issued:
    """A clientAuth certificate whose CN is `name` (shown in the server's logs).

    It also carries the SAN ``urn:fluidity:client:<name>``: verifiers following RFC 5280
    profiles (cryptography's, for one) want a SAN on every leaf.
    """
    _check_client_name(name)
    san = x509.UniformResourceIdentifier(f"urn:fluidity:client:{name}")
    return _leaf(ca, name, [san], ExtendedKeyUsageOID.CLIENT_AUTH, days)


def _check_client_name(name: str) -> None:
    if not _CLIENT_NAME.match(name):
        raise CertsError(
            f"client name {name!r} must start with a letter or digit and contain only "
            "letters, digits, '.', '_' and '-' (at most 64; it becomes part of file names)"
        )


def parse_san(value: str, *, dns_only: bool = False) -> x509.GeneralName:
    """An IP address becomes an IP SAN, anything else must be a DNS name (``*.`` allowed)."""
    text = value.strip().lower().rstrip(".")
    if not dns_only:
        try:
            return x509.IPAddress(ipaddress.ip_address(text))
        except ValueError:
            pass
    labels = text.split(".")
    if labels and labels[0] == "*" and len(labels) > 1 and not dns_only:
        labels = labels[1:]
    if not text or len(text) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        kind = "DNS name" if dns_only else "DNS name or IP address"
        raise CertsError(f"{value!r} is not a valid {kind}")
    return x509.DNSName(text)


def init_dir(
    directory: str | os.PathLike[str],
    *,
    server_name: str = DEFAULT_SERVER_NAME,
    sans: Sequence[str] = (),
    client_name: str = DEFAULT_CLIENT_NAME,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> list[Path]:
    """Create the CA, the server and one client certificate in `directory`; return the files.

    Nothing is written if any file exists and `force` is false.
    """
    _check_days(days)
    _check_client_name(client_name)
    root = Path(directory)
    targets = [
        root / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY)
    ]
    _refuse_existing(targets, force)
    ca = create_ca(days=max(days, CA_MIN_DAYS))
    server = issue_server_cert(ca, server_name, sans=sans, days=days)
    client = issue_client_cert(ca, client_name, days=days)
    _make_dir(root)
    for path, data, private in (
        (targets[0], ca.cert_pem, False),
        (targets[1], ca.key_pem, True),
        (targets[2], server.cert_pem, False),
        (targets[3], server.key_pem, True),
        (targets[4], client.cert_pem, False),
        (targets[5], client.key_pem, True),
    ):
        _write(path, data, private=private, force=force)
    return targets


def client_files(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Where `add_client` puts the certificate and key of client `name`."""
    root = Path(directory)
    return root / f"client-{name}.pem", root / f"client-{name}-key.pem"


def add_client(
    directory: str | os.PathLike[str], name: str, *, days: int = DEFAULT_DAYS, force: bool = False
) -> list[Path]:
    """Issue another client certificate with the CA in `directory`; return the new files."""
    _check_days(days)
    _check_client_name(name)
    root = Path(directory)
    ca_paths = (root / CA_CERT, root / CA_KEY)
    missing = [str(p) for p in ca_paths if not p.is_file()]
    if missing:
        raise CertsError(
            f"no CA found ({', '.join(missing)} missing); "
            f"run `fluidity certs init --dir {root}` first"
        )
    ca = Issued(ca_paths[0].read_bytes(), ca_paths[1].read_bytes())
    try:
        ca_cert = ca.cert
        _ = ca.key  # fail early on an unusable key
    except (ValueError, TypeError) as exc:
        raise CertsError(f"the CA in {root} cannot be read: {exc}") from None
    cert_path, key_path = client_files(root, name)
    _refuse_existing([cert_path, key_path], force)
    remaining = (ca_cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    if remaining < 1:
        raise CertsError(
            f"the CA in {root} has expired; create a new one with `certs init --force`"
        )
    client = issue_client_cert(ca, name, days=min(days, remaining))
    _write(cert_path, client.cert_pem, private=False, force=force)
    _write(key_path, client.key_pem, private=True, force=force)
    return [cert_path, key_path]


def _leaf(
    ca: Issued,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> Issued:
    _check_days(days)
    ca_cert, ca_key = ca.cert, ca.key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _issued(builder.sign(ca_key, hashes.SHA256()), key)


def _issued(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    return Issued(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise CertsError(f"days must be between 1 and 36500, got {days}")


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        raise CertsError(
            f"refusing to overwrite {', '.join(existing)}; pass --force to replace them "
            "(certificates signed by a replaced CA stop working)"
        )


def _make_dir(root: Path) -> None:
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertsError(f"cannot create directory {root}: {exc.strerror}") from None
    if not root.is_dir():
        raise CertsError(f"{root} exists and is not a directory")


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    """Create `path` anew; a private key is never readable by others, not even for an instant."""
    try:
        if force:
            path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise CertsError(f"cannot write {path}: {exc.strerror}") from None
