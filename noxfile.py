"""Developer sessions. Plain `nox` runs what CI runs: lint, tests and e2e."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "e2e"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (style, imports, flake8-async) and mypy --strict on the package."""
    install(session)
    session.run("ruff", "check", "fluidity", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "fluidity", "tests", "noxfile.py")
    session.run("mypy", "fluidity")
    session.run("cfn-lint", "cfn/fargate.yaml", "cfn/lambda.yaml")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The unit and system tests (pytest); extra arguments go to pytest."""
    install(session)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """End-to-end scenarios against the local cloud (tests/e2e); extra arguments go to pytest.

    Each test runs a fresh local cloud (moto, the API Gateway, Scheduler and Fargate stand-ins
    with the real Lambda handlers) and real agent and server processes, all on loopback.
    Plain `pytest` (the tests session) leaves tests/e2e out; see norecursedirs in
    pyproject.toml.
    """
    install(session)
    session.run("pytest", "tests/e2e", *session.posargs)


@nox.session(python=PYTHON)
def local(session: nox.Session) -> None:
    """The local cloud and an agent on this machine; the proxy listens on 127.0.0.1:8080."""
    install(session)
    session.run("fluidity", "local", "up", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput, latency and memory through the agent vs. direct and same-shape peers.

    Not part of the tests. pproxy (the two-hop TLS peer) comes from the package index; squid
    runs beside it when the machine has it. Extra arguments go to the bench
    (`nox -s bench -- --help`); results in .bench/results.json.
    """
    install(session)
    session.install("pproxy")
    if any(arg.startswith("--profile") for arg in session.posargs):
        session.install("py-spy")
    session.run("python", "-m", "tests.bench", *session.posargs)


@nox.session(python=PYTHON)
def lambda_zip(session: nox.Session) -> None:
    """Build dist/lambda.zip, the control-plane Lambda package, byte-for-byte reproducible.

    Standard library only, so nothing is installed. `-- --out PATH` writes elsewhere.
    """
    session.run("python", "lambda_src/build_zip.py", "--out", "dist/lambda.zip", *session.posargs)
