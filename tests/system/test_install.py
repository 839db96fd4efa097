"""A new user's first steps, as the README gives them: `fluidity certs init` with no
arguments, then both processes with no --config, from another directory; `--version`; the
agent as a service; and what `fluidity local up` says without the `local` extra."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import trio

from fluidity import __version__
from fluidity.agent.service import launchd_plist
from tests.support.processes import run_fluidity


async def fluidity(*args: str, xdg: Path | None = None, code: str | None = None) -> tuple[int, str]:
    """`python -m fluidity ARGS` (or `python -c CODE ARGS`), with XDG_CONFIG_HOME=`xdg`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUIDITY_")}
    if xdg is not None:
        env["XDG_CONFIG_HOME"] = str(xdg)
    program = ["-c", code] if code else ["-m", "fluidity"]
    result = await trio.run_process(
        [sys.executable, *program, *args],
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
        env=env,
    )
    return result.returncode, result.stdout.decode()


async def test_certs_init_then_both_processes_start_with_no_config_flag(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    code, out = await fluidity("certs", "init", xdg=xdg)
    assert code == 0, out
    config_dir = xdg / "fluidity"
    assert (config_dir / "certs" / "ca.pem").is_file()
    assert "certs/ca.pem" in (config_dir / "agent.yaml").read_text(), "relative to the file"
    env = {"XDG_CONFIG_HOME": str(xdg)}
    ports = ["--listen-host", "127.0.0.1", "--listen-port", "0"]
    # The tests run from the repository: certs/ca.pem there does not exist, so only paths
    # resolved against the config file can work.
    server_args = [*ports, "--health-host", "127.0.0.1", "--health-port", "0"]
    async with run_fluidity("fluidity.server", server_args, tmp_path, env=env) as server:
        agent_args = [*ports, "--server-port", str(server.port)]
        async with (
            run_fluidity("fluidity.agent", agent_args, tmp_path, env=env) as agent,
            httpx2.AsyncClient(proxy=f"http://127.0.0.1:{agent.port}", trust_env=False) as http,
        ):
            with trio.fail_after(20):
                # Loopback is refused by the server's default egress policy, before connecting:
                # the server's own 403 says the link came up.
                response = await http.get("http://127.0.0.1:9/")
    assert response.status_code == 403
    assert response.headers["x-fluidity-reason"] == "egress-denied"
    # A second init keeps the user's config files.
    code, out = await fluidity("certs", "init", "--force", xdg=xdg)
    assert code == 0, out
    assert "exists, kept" in out


@pytest.mark.parametrize(
    "program", [["-m", "fluidity"], ["-m", "fluidity.agent"], ["-m", "fluidity.server"]]
)
async def test_every_command_has_version(program: list[str]) -> None:
    result = await trio.run_process(
        [sys.executable, *program, "--version"], capture_stdout=True, check=False
    )
    assert result.returncode == 0
    assert __version__ in result.stdout.decode()


async def test_agent_install_writes_a_unit_systemd_accepts_and_uninstall_removes_it(
    tmp_path: Path,
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("systemd user units are for Linux")
    xdg = tmp_path / "xdg dir%1"  # a space and a % to quote in ExecStart
    assert (await fluidity("certs", "init", xdg=xdg))[0] == 0
    code, out = await fluidity("agent", "install", "--no-start", xdg=xdg)
    assert code == 0, out
    unit = xdg / "systemd" / "user" / "fluidity-agent.service"
    text = unit.read_text()
    config = xdg / "fluidity" / "agent.yaml"
    assert (
        f'ExecStart={sys.executable} -m fluidity.agent --config "{config}"'.replace("%", "%%")
        in text
    ), text
    assert "RestartPreventExitStatus=2" in text
    assert "systemctl --user enable --now fluidity-agent.service" in out
    if shutil.which("systemd-analyze") is not None:
        result = await trio.run_process(
            ["systemd-analyze", "verify", str(unit)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stderr.decode().strip() == "", "systemd accepts every line"
    code, out = await fluidity("agent", "uninstall", "--no-stop", xdg=xdg)
    assert code == 0, out
    assert not unit.exists()


async def test_agent_install_refuses_a_broken_config(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("systemd user units are for Linux")
    config = tmp_path / "agent.yaml"
    config.write_text("listen_prot: 8080\n")
    code, out = await fluidity("agent", "install", "--no-start", "--config", str(config),
                               xdg=tmp_path)  # fmt: skip
    assert code == 2
    assert "did you mean `listen_port`?" in out
    assert not (tmp_path / "systemd").exists()


def test_the_launchd_agent_runs_the_agent_and_restarts_it_on_failure(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "fluidity.agent", "--config", "/Users/me/agent.yaml"]
    plist = plistlib.loads(launchd_plist(argv, tmp_path / "agent.log"))
    assert plist["ProgramArguments"] == argv
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardErrorPath"] == str(tmp_path / "agent.log")


async def test_local_up_without_the_local_extra_names_it() -> None:
    hide_moto = "import sys; sys.modules['moto'] = None; from fluidity.cli import main; main()"
    code, out = await fluidity("local", "up", code=hide_moto)
    assert code == 1
    assert "pip install 'fluidity[local]'" in out
    assert "Traceback" not in out
