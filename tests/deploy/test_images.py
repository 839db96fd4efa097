"""The container images and the compose file, read as text (Docker is not available to the
tests): what every build must keep."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


IMAGES = {
    "server.Dockerfile": ("fluidity.server", {8443, 8081}),
    "agent.Dockerfile": ("fluidity.agent", {8080}),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_essentials(name: str) -> None:
    module, ports = IMAGES[name]
    path = DEPLOY / name
    every = instructions(path)
    args = dict(a.split("=", 1) for word, a in every if word == "ARG" and "=" in a)
    build, final = stages(path)
    # Multi-stage, slim base for both.
    assert len(stages(path)) == 2
    for stage in (build, final):
        base = stage[0][1].split()[0]
        base = args.get(base.strip("${}"), base)
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    assert build[0][1].endswith(" AS build")
    # The project is pip-installed (as CI does) in the build stage only.
    assert any(w == "RUN" and re.search(r"pip install \.$", a) for w, a in build)
    assert not any(w == "RUN" and "pip install" in a for w, a in final)
    assert ("COPY", "--from=build /opt/fluidity /opt/fluidity") in final
    # A non-root user, set before the entry point.
    users = [a for w, a in final if w == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert [w for w, _ in final].index("USER") < [w for w, _ in final].index("ENTRYPOINT")
    # The module as the entry point, in exec form.
    (entrypoint,) = [json.loads(a) for w, a in final if w == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", module]
    # The ports.
    exposed = {int(p) for w, a in final if w == "EXPOSE" for p in a.split()}
    assert exposed == ports
    # A health check that is valid Python hitting /healthz.
    (healthcheck,) = [a for w, a in final if w == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    compile(command[2], "healthcheck", "exec")
    # Only the files the install needs reach the build (BuildKit's per-Dockerfile ignore file).
    ignore = (DEPLOY / f"{name}.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!fluidity/"]


def test_images_install_what_pyproject_needs() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for name in IMAGES:
        copied = {
            source
            for w, a in instructions(DEPLOY / name)
            if w == "COPY" and not a.startswith("--from")
            for source in a.split()[:-1]
        }
        # pip install . needs the metadata, the readme it names, and the package.
        assert copied == {"pyproject.toml", project["readme"], "fluidity"}
    assert (REPO / "fluidity" / "server" / "__main__.py").exists()
    assert (REPO / "fluidity" / "agent" / "__main__.py").exists()


def test_compose_runs_server_and_agent_with_mounted_certificates() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"server", "agent"}
    for name, service in services.items():
        assert service["build"] == {"context": "..", "dockerfile": f"deploy/{name}.Dockerfile"}
        assert "../certs:/certs:ro" in service["volumes"]
        assert not str(service["user"]).startswith(("0:", "root"))
        assert "10001" in service["user"]  # the default, when FLUIDITY_UID is not set
    server = services["server"]["environment"]
    assert server["FLUIDITY_SERVER_CERT"] == "/certs/server.pem"
    assert server["FLUIDITY_SERVER_KEY"] == "/certs/server-key.pem"
    assert server["FLUIDITY_CA_CERT"] == "/certs/ca.pem"
    agent = services["agent"]
    assert agent["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert agent["environment"]["FLUIDITY_SERVER_HOST"] == "server"
    assert agent["environment"]["FLUIDITY_CLIENT_KEY"] == "/certs/client-key.pem"
    assert "FLUIDITY_PROXY_AUTH" in agent["environment"]
    # The proxy is published on the host's loopback only; the tunnel is not published at all.
    assert agent["ports"] == ["127.0.0.1:8080:8080"]
    assert "ports" not in services["server"]
