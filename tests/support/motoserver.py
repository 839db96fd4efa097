"""Run `moto_server` (or a module wrapping it) as a real process on a free loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_BOUND = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


@contextmanager
def moto_server(
    log_path: Path,
    env: Mapping[str, str],
    *,
    module: str = "moto.server",
    cwd: Path | None = None,
) -> Iterator[str]:
    """`python -m <module> -H 127.0.0.1 -p 0`; yields its URL once it answers a request.

    The server logs every request: its output goes to `log_path` (a pipe would fill up).
    """
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
        )
    try:
        yield _wait_until_serving(process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """The URL it printed once bound to port 0, after it answered; fails if it exits."""
    for _ in range(int(START_TIMEOUT / 0.05)):
        found = _BOUND.search(log_path.read_text("latin-1"))
        if found and _answers(int(found.group(1))):
            return f"http://127.0.0.1:{found.group(1)}"
        try:
            # Waiting on the process, not sleeping: a server that dies ends the wait at once.
            process.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"moto_server exited:\n{log_path.read_text(errors='replace')[-4000:]}")
    raise RuntimeError(
        f"moto_server did not start:\n{log_path.read_text(errors='replace')[-4000:]}"
    )


def _answers(port: int) -> bool:
    connection = HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/moto-api/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()
