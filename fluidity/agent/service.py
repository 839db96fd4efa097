"""`fluidity agent install` / `uninstall`: the agent as a service of the user's session.

Linux gets a systemd user unit (``~/.config/systemd/user/fluidity-agent.service``), macOS a
launchd agent (``~/Library/LaunchAgents/dev.fluidity.agent.plist``). Either runs this Python
with ``-m fluidity.agent --config <the agent's file>``, starts at login, and restarts the agent
when it fails, but not after a configuration error (exit status 2), which a restart cannot
fix. The config file is loaded first, so a broken one fails here and not in the service.
"""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import click
import platformdirs

from fluidity.settings import default_config_file, load_config

from .settings import AgentConfig

__all__ = ["agent_group", "launchd_plist", "systemd_unit"]

UNIT = "fluidity-agent.service"
LABEL = "dev.fluidity.agent"


def command_line(config: Path) -> list[str]:
    """How the service starts the agent: this interpreter, so this installation."""
    return [sys.executable, "-m", "fluidity.agent", "--config", str(config)]


def _systemd_word(word: str) -> str:
    """One ExecStart argument: quoted when needed, % doubled (systemd's specifier sign)."""
    word = word.replace("%", "%%")
    if word and not any(c.isspace() or c in "\"'\\;$" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(argv: Sequence[str]) -> str:
    """The systemd user unit that runs `argv`."""
    return (
        "[Unit]\n"
        "Description=Fluidity agent (local HTTP proxy tunnelling to your Fluidity server)\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_systemd_word(a) for a in argv)}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "# 2: a configuration error, which a restart cannot fix\n"
        "RestartPreventExitStatus=2\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist(argv: Sequence[str], log: Path) -> bytes:
    """The launchd agent that runs `argv`, its output in `log`."""
    return plistlib.dumps(
        {
            "Label": LABEL,
            "ProgramArguments": list(argv),
            "RunAtLoad": True,
            # Restarted when it fails; an exit with status 0 (a normal stop) stays stopped.
            "KeepAlive": {"SuccessfulExit": False},
            "ThrottleInterval": 5,
            "StandardOutPath": str(log),
            "StandardErrorPath": str(log),
        }
    )


def _kind() -> str:
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux"):
        return "systemd"
    raise click.ClickException(
        f"no service manager known on {sys.platform}; run `fluidity-agent` yourself"
    )


def unit_path(kind: str) -> Path:
    if kind == "systemd":
        return platformdirs.user_config_path() / "systemd" / "user" / UNIT
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def _run(commands: list[list[str]], start: bool) -> None:
    """Run the service manager's commands, or say them when told not to or it is missing."""
    if start and shutil.which(commands[0][0]) is not None:
        for argv in commands:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                click.echo(
                    f"`{' '.join(argv)}` failed: {result.stderr.strip()}; the file is written: "
                    "run the commands yourself in your desktop session",
                    err=True,
                )
                raise SystemExit(1)
        return
    click.echo("Then run:")
    for argv in commands:
        click.echo(f"  {' '.join(argv)}")


@click.group("agent")
def agent_group() -> None:
    """Run the agent as a service of your session (systemd user unit, launchd agent)."""


@agent_group.command("install")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The agent's config file. [default: agent.yaml in the config directory]",
)
@click.option(
    "--no-start", is_flag=True, help="Only write the unit; print the commands that start it."
)
def install(config: Path | None, no_start: bool) -> None:
    """Write the service that runs the agent at login, and start it."""
    kind = _kind()
    config = (config or default_config_file(AgentConfig)).expanduser().absolute()
    if not config.is_file():
        raise click.ClickException(
            f"{config} does not exist: give the agent's config file with --config "
            "(`fluidity certs init` writes one)"
        )
    # A ConfigError ends here (status 2). The service gets none of this shell's FLUIDITY_*
    # variables, so they are left out of the check too.
    load_config(AgentConfig, path=str(config), env={})
    path = unit_path(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = command_line(config)
    if kind == "systemd":
        path.write_text(systemd_unit(argv))
        click.echo(f"Wrote {path}")
        _run(
            [
                ["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", "--now", UNIT],
            ],
            not no_start,
        )
        click.echo(f"Logs: journalctl --user -u {UNIT}")
    else:
        log = Path.home() / "Library" / "Logs" / "fluidity-agent.log"
        path.write_bytes(launchd_plist(argv, log))
        click.echo(f"Wrote {path}")
        _run([["launchctl", "load", "-w", str(path)]], not no_start)
        click.echo(f"Logs: {log}")


@agent_group.command("uninstall")
@click.option("--no-stop", is_flag=True, help="Only remove the unit; print the stop commands.")
def uninstall(no_stop: bool) -> None:
    """Stop the agent's service and remove it."""
    kind = _kind()
    path = unit_path(kind)
    if not path.exists():
        raise click.ClickException(f"no agent service is installed ({path} does not exist)")
    if kind == "systemd":
        _run([["systemctl", "--user", "disable", "--now", UNIT]], not no_stop)
        path.unlink()
        _run([["systemctl", "--user", "daemon-reload"]], not no_stop)
    else:
        _run([["launchctl", "unload", "-w", str(path)]], not no_stop)
        path.unlink()
    click.echo(f"Removed {path}")
