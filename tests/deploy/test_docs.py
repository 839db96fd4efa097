"""docs/deployment.md, run: every command in its sh blocks, in order, against the emulator.

`fluidity` commands run for real (answering the prompts with y); the agent's config is loaded
as the agent loads it; the Docker lines must be exactly what `fluidity deploy` printed (or name
files that exist); `pip install` is what the test environment was built with; `curl` needs
the real tunnel. A command of any other kind fails the test, so the page cannot grow an
untested step.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from fluidity.agent.settings import AgentConfig
from fluidity.settings import load_config
from tests.deploy.conftest import REPO, Emulator, Fluidity, stack_outputs

DOC = REPO / "docs" / "deployment.md"


def commands() -> list[str]:
    text = DOC.read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def test_the_walkthrough_runs(fluidity: Fluidity, aws: Emulator, workdir: Path) -> None:
    lines = commands()
    assert len(lines) >= 10
    printed = ""
    ran: list[str] = []
    for line in lines:
        words = shlex.split(line)
        if words[0] == "fluidity":
            answers = "y\ny\n" if words[1] in ("deploy", "destroy") else None
            result = fluidity(words[1:], input=answers)
            assert result.exit_code == 0, f"{line}\n{result.output}"
            printed += result.output
        elif words[:3] == ["python", "-m", "fluidity.agent"]:
            config = words[words.index("--config") + 1]
            settings = load_config(AgentConfig, path=config, env={}, flags={})
            assert settings.api_url == stack_outputs(aws, "fluidity-lambda")["ApiUrl"]
            assert settings.api_key
        elif words[0] in ("aws", "docker") and "deploy/compose.yaml" not in words:
            # The push commands: the same as deploy printed, for this account and region.
            assert f"  {line}\n" in printed, f"deploy did not print: {line}"
            if "-f" in words:
                assert (REPO / words[words.index("-f") + 1]).is_file()
        elif "docker" in words and "compose" in words:
            compose = REPO / words[words.index("-f") + 1]
            services = yaml.safe_load(compose.read_text())
            for name in re.findall(r"(FLUIDITY_[A-Z]+)=", line):
                assert name in compose.read_text(), name
            assert set(services["services"]) == {"server", "agent"}
        elif words[:2] == ["pip", "install"]:
            assert words[2:] == ["-e", "."]  # how the test environment is installed
        elif words[0] == "curl":
            assert words[1:3] == ["-x", "http://127.0.0.1:8080"]  # the agent's default port
        else:
            raise AssertionError(f"docs/deployment.md: no test runs {line!r}")
        ran.append(words[0] if words[0] != "python" else "agent")
    # The tour went from nothing to running and back to nothing.
    assert [w for w in ran if w == "fluidity"] == ["fluidity"] * 4
    stacks = aws.client("cloudformation").describe_stacks()["Stacks"]
    assert [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"] == []
    assert aws.client("secretsmanager").list_secrets()["SecretList"] == []
