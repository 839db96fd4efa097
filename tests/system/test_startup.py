"""Start-up failures of the real processes: one line naming the setting, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from tests.support.pki import Pki
from tests.support.processes import agent_args, run_fluidity, server_args


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def exits(module: str, args: list[str], workdir: Path) -> tuple[int, str]:
    """Run a process expected to stop by itself; its exit status and output."""
    async with run_fluidity(module, args, workdir, wait_ready=False) as running:
        with trio.fail_after(20):
            code = await running.wait()
        return code, running.log()


def assert_one_line(output: str, *needles: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], output


async def test_agent_on_a_busy_port_says_which_setting(pki: Pki, tmp_path: Path) -> None:
    with busy_port() as port:
        args = agent_args(pki, 1, "--listen-port", str(port))
        code, output = await exits("fluidity.agent", args, tmp_path)
    assert code == 1
    assert_one_line(
        output, f"127.0.0.1:{port}", "already in use", "listen_port", "FLUIDITY_LISTEN_PORT"
    )


@pytest.mark.parametrize(
    ("flag", "setting"), [("--listen-port", "listen_port"), ("--health-port", "health_port")]
)
async def test_server_on_a_busy_port_says_which_setting(
    pki: Pki, tmp_path: Path, flag: str, setting: str
) -> None:
    with busy_port() as port:
        code, output = await exits("fluidity.server", server_args(pki, flag, str(port)), tmp_path)
    assert code == 1
    assert_one_line(output, f"127.0.0.1:{port}", "already in use", setting, f"--{flag[2:]}")


async def test_an_address_not_of_this_machine_names_listen_host(pki: Pki, tmp_path: Path) -> None:
    # TEST-NET-1 (RFC 5737) is never assigned to this machine: binding fails, nothing is sent.
    args = agent_args(pki, 1, "--listen-host", "192.0.2.1", "--proxy-auth", "u:p")
    code, output = await exits("fluidity.agent", args, tmp_path)
    assert code == 1
    assert_one_line(output, "192.0.2.1", "not an address of this machine", "listen_host")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_an_ipv6_listener_is_logged_in_brackets(pki: Pki, tmp_path: Path) -> None:
    args = agent_args(pki, 1, "--listen-host", "::1")
    async with run_fluidity("fluidity.agent", args, tmp_path) as agent:
        assert f"proxy listening on http://[::1]:{agent.port} " in agent.log()


def test_settle_collector_freezes_start_up_and_spaces_young_collections() -> None:
    """Run in a child: the test process's own collector is left as it is."""
    code = (
        "import gc; from fluidity.startup import GC_YOUNG_THRESHOLD, settle_collector; "
        "before = gc.get_freeze_count(); settle_collector(); "
        "print(gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_freeze_count() > before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr
