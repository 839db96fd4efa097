"""Why a link attempt failed, in words a person can act on.

Trio and OpenSSL report every failed attempt as a BrokenResourceError or an OSError with the
real cause a level or two down, in OpenSSL's words (`CERTIFICATE_VERIFY_FAILED`,
`WRONG_VERSION_NUMBER`, an EOF). `classify` turns one into a `LinkFailure`: a named cause, a
message, a hint naming the setting to check, and whether it is *permanent*: a mistake in the
configuration that retrying cannot fix (certificates, names, ports), logged at ERROR once and
shown in /healthz, as opposed to the transient ones (refused, timed out) a restarting server
causes, retried quietly. The agent keeps retrying both: the server's side may be fixed.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

import attrs
import trio

from fluidity.tunnel import LinkClosed

__all__ = ["LinkFailure", "classify"]

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that tell a wrong CA from a wrong name or date.
_NOT_YET_VALID = 9
_EXPIRED = 10
_HOSTNAME_MISMATCH = 62
_OTHER_CA = frozenset({2, 18, 19, 20, 21})  # unknown issuer, self-signed, unverifiable leaf

#: OpenSSL reasons for bytes that are not TLS at all: something else listens on server_port.
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
)
#: TLS alerts a server sends when it refuses our client certificate.
_REJECTED_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_DECRYPT_ERROR",
)


@attrs.frozen
class LinkFailure:
    """One failed attempt: `cause` is a stable name (shown in /healthz), `message` what
    happened, `hint` what to check."""

    cause: str
    message: str
    hint: str
    permanent: bool

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its causes and contexts, and the members of any exception group among them."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def classify(
    exc: BaseException, where: str, *, tls_done: bool, connect_timeout: float
) -> LinkFailure:
    """The cause of a failed attempt to reach the server at `where`.

    `tls_done`: the TLS handshake had succeeded, so the failure came after it (TLS 1.3
    servers check the client certificate only then).
    """
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return _verify_failure(e, where)
    for e in chain:
        if isinstance(e, ssl.SSLError):
            reason = e.reason or ""
            if reason in _NOT_TLS:
                return LinkFailure(
                    "not_fluidity",
                    f"{where} is not a Fluidity server (it does not speak TLS: {reason})",
                    "server_port must be the server's TLS port (listen_port on the server, "
                    "8443 by default), not its health port or another service",
                    permanent=True,
                )
            if any(reason.endswith(alert) for alert in _REJECTED_ALERTS):
                return _rejected(where, f"TLS alert {reason}")
    if isinstance(exc, trio.TooSlowError):
        return LinkFailure(
            "timed_out",
            f"connecting to {where} timed out after {connect_timeout:g} s",
            "check server_host and server_port, and that no firewall drops the traffic",
            permanent=False,
        )
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return LinkFailure(
                "refused",
                f"{where} refused the connection",
                "the server is not running or listens on another port (server_port)",
                permanent=False,
            )
        if isinstance(e, socket.gaierror):
            return LinkFailure(
                "name_not_resolved",
                f"cannot resolve the server address {where}",
                "check server_host and this machine's network",
                permanent=False,
            )
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return LinkFailure(
                "unreachable",
                f"{where} is unreachable ({e.strerror})",
                "check this machine's network and server_host",
                permanent=False,
            )
    if tls_done and _is_eof(chain):
        # TLS 1.3: the handshake ends for us before the server has checked our certificate;
        # a server that refuses it just closes (or sends an alert, handled above).
        return _rejected(where, "it closed the connection right after the TLS handshake")
    if not tls_done and _is_eof(chain):
        return LinkFailure(
            "closed_in_handshake",
            f"{where} closed the connection during the TLS handshake",
            "a server at its link limit or shutting down does this; so does another service "
            "on server_port",
            permanent=False,
        )
    return LinkFailure("link_failed", f"{where}: {_text(exc)}", "", permanent=False)


def _verify_failure(e: ssl.SSLCertVerificationError, where: str) -> LinkFailure:
    code = e.verify_code
    if code == _HOSTNAME_MISMATCH:
        return LinkFailure(
            "server_name_mismatch",
            f"the certificate of {where} is not for the expected name ({e.verify_message})",
            "server_name must be the name in the server certificate (`fluidity certs init "
            "--server-name`, fluidity-server by default)",
            permanent=True,
        )
    if code in (_EXPIRED, _NOT_YET_VALID):
        when = "has expired" if code == _EXPIRED else "is not valid yet"
        return LinkFailure(
            "certificate_expired",
            f"the certificate of {where} {when}",
            "issue new server certificates (`fluidity certs init`, docs/certificates.md) "
            "and check both clocks",
            permanent=True,
        )
    if code in _OTHER_CA:
        return LinkFailure(
            "server_certificate_untrusted",
            f"the certificate of {where} is from another CA ({e.verify_message})",
            "ca_cert must be the CA that signed the server certificate: the ca.pem next to "
            "the server's certificates",
            permanent=True,
        )
    return LinkFailure(
        "server_certificate_invalid",
        f"the certificate of {where} was refused: {e.verify_message}",
        "check ca_cert and the server's certificate",
        permanent=True,
    )


def _rejected(where: str, why: str) -> LinkFailure:
    return LinkFailure(
        "certificate_rejected",
        f"{where} rejected our client certificate ({why})",
        "client_cert must be signed by the CA the server trusts (its ca_cert) and still valid; "
        "`fluidity certs client NAME --dir <CA dir>` issues a new one",
        permanent=True,
    )


def _is_eof(chain: list[BaseException]) -> bool:
    for e in chain:
        if isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError):
            return True
        if isinstance(e, ssl.SSLError) and e.reason == "UNEXPECTED_EOF_WHILE_READING":
            return True
        if isinstance(e, LinkClosed) and ("EOF" in str(e) or "reset" in str(e).lower()):
            return True
    return False


def _text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
