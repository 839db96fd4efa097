"""Starting a process: listeners opened before anything else, failures as one line.

A port already in use is the most common first-day failure. `open_tcp_listeners` raises a
bare OSError naming neither the setting nor the fix, and inside a nursery trio wraps it in an
exception group, so it used to reach the user as a long traceback. Each process opens its
listeners through `open_listeners` before it starts any task; a failure is a `StartupError`
whose message names the setting and the fix, which the process prints as one line before it
exits with status 1 (`startup_error` finds it in a nursery's exception group).
"""

from __future__ import annotations

import datetime as dt
import errno
import gc
import socket
from typing import Any

import trio
from cryptography import x509

from fluidity import tls
from fluidity.settings import names

__all__ = [
    "StartupError",
    "expired",
    "host_port",
    "open_listeners",
    "settle_collector",
    "startup_error",
]

#: Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


class StartupError(Exception):
    """The process cannot start; the message names the setting at fault and the fix."""


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:8080``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_listeners(
    config: Any, host_key: str, port_key: str, what: str
) -> list[trio.SocketListener]:
    """trio's listeners on the address of settings `host_key` and `port_key` of `config`.

    `what` names the listener in messages ("the proxy", "the health endpoint").
    """
    host: str = getattr(config, host_key)
    port: int = getattr(config, port_key)
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise StartupError(_bind_failure(config, host_key, port_key, what, exc)) from None


def _bind_failure(config: Any, host_key: str, port_key: str, what: str, exc: OSError) -> str:
    host: str = getattr(config, host_key)
    port: int = getattr(config, port_key)
    where = f"cannot listen on {host_port(host, port)} for {what}"
    port_names = f"{port_key} ({names(config, port_key)})"
    host_names = f"{host_key} ({names(config, host_key)})"
    if isinstance(exc, socket.gaierror):
        return f"{where}: {host!r} is not an address of this machine; set {host_names}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: port {port} is already in use by another program (perhaps another "
            f"Fluidity process; `ss -ltnp` or `lsof -i :{port}` shows which); stop it or choose "
            f"another port with {port_names}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{where}: permission denied (ports below 1024 need privileges); choose a port of "
            f"1024 or more with {port_names}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {host} is not an address of this machine; set {host_names} to one of "
            "its addresses (127.0.0.1 for this machine only, 0.0.0.0 for all)"
        )
    return f"{where}: {exc.strerror or exc}; check {host_names} and {port_names}"


def expired(config: Any, key: str, fix: str) -> str | None:
    """What to say when the certificate of setting `key` is out of its validity period.

    The process still starts (the other side may be what is being fixed, and a certificate
    can expire while it runs anyway), but this says at once what every link will hit.
    """
    try:
        cert = x509.load_pem_x509_certificate(tls.load_pem(getattr(config, key), key))
    except ValueError:  # checked when the settings were loaded; nothing more to say here
        return None
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        when = f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    elif cert.not_valid_before_utc > now:
        when = (
            f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"
        )
    else:
        return None
    return f"the certificate in {key} ({names(config, key)}) {when}: every link will fail; {fix}"


def startup_error(group: BaseExceptionGroup[BaseException]) -> StartupError | None:
    """The StartupError a nursery raised, if that is all it raised."""
    match, rest = group.split(StartupError)
    if match is None or rest is not None:
        return None
    exc: BaseException = match
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, StartupError)
    return exc


def settle_collector() -> None:
    """Tune the cyclic garbage collector for a process that serves requests until it stops.

    What exists at start-up (modules, classes, configuration) lives as long as the process:
    frozen, it stays out of every later collection, so the full passes stay short (they showed
    in the tail latency: GET p99 31 -> 22 ms in the bench). A proxied request allocates a few
    hundred containers that almost all die by reference counting within the request; at
    CPython's default a young collection ran every few requests, scanning requests still in
    flight. Collected every 20,000 allocations instead, fewer of them are still alive when it
    runs (about 4% of the CPU per GET, `nox -s bench -- --phases get`), and what cyclic garbage
    waits for it is bounded by that count.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
