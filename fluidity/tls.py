"""TLS 1.3 contexts for the mutually authenticated link, trusting only our private CA.

Certificates and keys are given as a file path or as the PEM text itself (so a container can
take them from a secret in an environment variable). `ssl` can only load a certificate chain
from a file, so PEM text is written to a private temporary file (mode 0600) that is deleted
as soon as it has been loaded. Error messages name what failed to load, never its content.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

__all__ = ["PEMError", "client_ssl_context", "load_pem", "server_ssl_context"]

#: Larger "PEM" inputs are certainly a wrong path (a log file, a device), not a certificate.
_MAX_PEM_BYTES = 1024 * 1024
_PATH_SUFFIXES = (".pem", ".crt", ".cer", ".key")


class PEMError(ValueError):
    """A certificate or key could not be read or used; the message names it, never its content."""


def load_pem(value: str | bytes, what: str) -> bytes:
    """Return the PEM bytes of `value`, which is either PEM text or the path of a PEM file.

    Text is recognised by its ``-----BEGIN`` line. Escaped newlines (a literal ``\\n``, as some
    secret stores hand out single-line values) are turned back into real ones.
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if "-----BEGIN " in text:
        if "\n" not in text.strip() and "\\n" in text:
            text = text.replace("\\n", "\n")
        data = text.encode("ascii", "replace")
        source = "the PEM text"
    else:
        if not text.strip():
            raise PEMError(f"{what}: empty; give a PEM file path or the PEM text itself")
        path = Path(text.strip()).expanduser()
        shown = _show_path(text)
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_PEM_BYTES + 1)
        except OSError as exc:
            if shown is None:
                raise PEMError(
                    f"{what}: neither PEM text nor a readable file (value not shown)"
                ) from None
            if isinstance(exc, FileNotFoundError):
                raise PEMError(f"{what}: file {shown} does not exist") from None
            if isinstance(exc, IsADirectoryError):
                raise PEMError(f"{what}: {shown} is a directory, not a PEM file") from None
            raise PEMError(f"{what}: cannot read {shown} ({exc.strerror})") from None
        shown = shown or "(path not shown)"
        if len(data) > _MAX_PEM_BYTES:
            raise PEMError(f"{what}: file {shown} is too large to be a PEM file")
        source = f"file {shown}"
    if b"-----BEGIN " not in data or b"-----END " not in data:
        raise PEMError(f"{what}: {source} is not PEM (no -----BEGIN/-----END block)")
    return data


def server_ssl_context(cert: str | bytes, key: str | bytes, ca: str | bytes) -> ssl.SSLContext:
    """A TLS 1.3-only server context that requires a client certificate issued by `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _restrict(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca)
    _load_chain(ctx, cert, key, "server")
    return ctx


def client_ssl_context(cert: str | bytes, key: str | bytes, ca: str | bytes) -> ssl.SSLContext:
    """A TLS 1.3-only client context that presents `cert` and trusts only servers from `ca`.

    Hostname checking is on: wrap streams with ``server_hostname=`` the configured server
    name (the name in the server certificate, not the server's changing IP address).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _restrict(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    _load_ca(ctx, ca)
    _load_chain(ctx, cert, key, "client")
    return ctx


def _restrict(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3


def _load_ca(ctx: ssl.SSLContext, ca: str | bytes) -> None:
    """Trust exactly the given CA; no system CAs are ever loaded."""
    data = load_pem(ca, "the CA certificate")
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise PEMError(f"the CA certificate could not be loaded ({_reason(exc)})") from None


def _load_chain(ctx: ssl.SSLContext, cert: str | bytes, key: str | bytes, role: str) -> None:
    cert_pem = load_pem(cert, f"the {role} certificate")
    key_pem = load_pem(key, f"the {role} private key")
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise PEMError(f"the {role} certificate holds no CERTIFICATE block (is it the key?)")
    if b"PRIVATE KEY-----" not in key_pem:
        raise PEMError(f"the {role} private key holds no PRIVATE KEY block (is it a certificate?)")
    if b"ENCRYPTED" in key_pem:
        raise PEMError(f"the {role} private key is encrypted; give an unencrypted key")
    fd, name = tempfile.mkstemp(prefix="fluidity-", suffix=".pem")  # created with mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem.rstrip(b"\n") + b"\n" + key_pem)
        ctx.load_cert_chain(name, password=_no_password)
    except ssl.SSLError as exc:
        raise PEMError(
            f"the {role} certificate and private key could not be loaded together ({_reason(exc)})"
        ) from None
    finally:
        os.unlink(name)


def _no_password() -> bytes:
    """Stop OpenSSL from prompting on the terminal for an encrypted key."""
    raise PEMError("encrypted private keys are not supported")


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__


def _show_path(value: str) -> str | None:
    """The path quoted for an error message, or None if it might be a mangled secret."""
    v = value.strip()
    looks_like_path = len(v) <= 200 and not any(c.isspace() for c in v)
    if looks_like_path and (v.startswith(("/", "./", "../", "~")) or v.endswith(_PATH_SUFFIXES)):
        return repr(v)
    return None
