"""The agent and server commands: --help, config errors, and handing the config to `run`."""

from __future__ import annotations

import contextlib
import gc
import socket
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from fluidity import runcli
from fluidity.agent import cli as agent_cli
from fluidity.agent.settings import AgentConfig
from fluidity.server import cli as server_cli
from fluidity.server.settings import ServerConfig


@pytest.mark.parametrize(
    ("module", "cls"), [("fluidity.agent", AgentConfig), ("fluidity.server", ServerConfig)]
)
def test_python_m_help_lists_every_option(module: str, cls: type[attrs.AttrsInstance]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for field in attrs.fields(cls):
        assert "--" + field.name.replace("_", "-") in result.stdout
    assert "--config" in result.stdout


def fake_app(monkeypatch: pytest.MonkeyPatch, module: str, code: int) -> list[object]:
    """Stand in for `<module>.app` (the real one runs the process); record its `run` calls."""
    calls: list[object] = []

    def run(config: object) -> int:
        calls.append(config)
        return code

    monkeypatch.setitem(sys.modules, f"{module}.app", types.SimpleNamespace(run=run))
    return calls


@pytest.fixture
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(runcli, "setup_logging", lambda level, fmt: calls.append((level, fmt)))
    return calls


def test_agent_runs_with_loaded_config(
    monkeypatch: pytest.MonkeyPatch, cert_dir: Path, no_logging_setup: list[tuple[str, str]]
) -> None:
    calls = fake_app(monkeypatch, "fluidity.agent", 3)
    env = {"FLUIDITY_CA_CERT": str(cert_dir / "ca.pem"), "FLUIDITY_LOG_FORMAT": "json"}
    args = [
        "--client-cert",
        str(cert_dir / "client.pem"),
        "--client-key",
        str(cert_dir / "client-key.pem"),
    ]
    result = CliRunner().invoke(agent_cli.main, [*args, "--listen-port", "0"], env=env)
    assert result.exit_code == 3, result.output
    [config] = calls
    assert isinstance(config, AgentConfig)
    assert config.listen_port == 0
    assert no_logging_setup == [("info", "json")]


def test_server_runs_with_loaded_config(
    monkeypatch: pytest.MonkeyPatch, cert_dir: Path, no_logging_setup: list[tuple[str, str]]
) -> None:
    calls = fake_app(monkeypatch, "fluidity.server", 0)
    args = [
        "--server-cert", str(cert_dir / "server.pem"),
        "--server-key", str(cert_dir / "server-key.pem"),
        "--ca-cert", str(cert_dir / "ca.pem"),
        "--static-hosts", "a.test=127.0.0.1",
    ]  # fmt: skip
    result = CliRunner().invoke(server_cli.main, args, env={})
    assert result.exit_code == 0, result.output
    [config] = calls
    assert isinstance(config, ServerConfig)
    assert config.static_hosts == {"a.test": "127.0.0.1"}


@pytest.mark.parametrize("cli", [agent_cli, server_cli])
def test_config_error_exits_2_with_message(
    monkeypatch: pytest.MonkeyPatch, cli: types.ModuleType, no_logging_setup: list[tuple[str, str]]
) -> None:
    calls = fake_app(monkeypatch, cli.__name__.rsplit(".", 1)[0], 0)
    result = CliRunner().invoke(cli.main, [], env={"FLUIDITY_LISTEN_PORT": "http"})
    assert result.exit_code == 2
    assert result.output.startswith("error: invalid listen_port in environment variable")
    assert calls == []
    assert no_logging_setup == []


def test_missing_certs_say_how_to_make_them(no_logging_setup: list[tuple[str, str]]) -> None:
    result = CliRunner().invoke(agent_cli.main, [], env={})
    assert result.exit_code == 2
    assert "ca_cert is required" in result.output
    assert "fluidity certs init" in result.output


def test_startup_objects_are_frozen_before_the_server_runs(cert_dir: Path) -> None:
    """What exists at startup is left out of later collections (short full GC passes)."""
    from fluidity.server import app

    with socket.socket() as busy:  # the server cannot listen, so `run` ends at once
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = ServerConfig(
            listen_host="127.0.0.1",
            listen_port=busy.getsockname()[1],
            health_host="127.0.0.1",
            health_port=0,
            server_cert=str(cert_dir / "server.pem"),
            server_key=str(cert_dir / "server-key.pem"),
            ca_cert=str(cert_dir / "ca.pem"),
        )
        gc.unfreeze()
        try:
            with contextlib.suppress(Exception):  # how it fails is not the point here
                app.run(config)
            frozen = gc.get_freeze_count()
        finally:
            gc.unfreeze()
    assert frozen > 1000  # the modules, classes and functions loaded so far
