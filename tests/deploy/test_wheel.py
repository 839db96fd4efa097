"""`fluidity deploy` from an installed wheel: the templates and the Lambda sources travel inside
the package, so no checkout is needed.

The wheel is built from this checkout, installed with its dependencies into a new virtual
environment, and run from a directory outside the checkout against the emulator.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fluidity.deploy.bundle import lambda_zip_bytes
from tests.deploy.conftest import REGION, REPO, Emulator, _fake_aws_environment, stack_outputs

#: Per step; the whole test takes about 20 s (pip answers from its cache).
STEP_TIMEOUT = 180


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment holding the wheel built from this checkout; its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "dist", str(REPO)]
    run(build, root, env)
    [wheel] = (root / "dist").glob("fluidity-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "fluidity/_cfn/fargate.yaml" in names
    assert "fluidity/_lambda_src/fluidity_lambda/wake.py" in names
    run([sys.executable, "-m", "venv", "venv"], root, env)
    bin_dir = root / "venv" / "bin"
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], root, env)
    return bin_dir


def test_deploy_from_an_installed_wheel(installed: Path, aws: Emulator, tmp_path: Path) -> None:
    env = _fake_aws_environment({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    where = run(
        [
            str(installed / "python"),
            "-c",
            "import fluidity, importlib.resources as r; "
            "print(fluidity.__file__); print(r.files('fluidity._cfn') / 'lambda.yaml')",
        ],
        tmp_path,
        env,
    ).stdout.split()
    site = installed.parent / "lib"
    assert all(Path(path).is_relative_to(site) for path in where), where  # not the checkout

    run([str(installed / "fluidity"), "certs", "init", "--dir", "certs"], tmp_path, env)
    deploy = [
        str(installed / "fluidity"), "deploy",
        "--region", REGION,
        "--allowed-cidr", "203.0.113.7/32",
        "--create-bucket", "--yes",
        "--endpoint-url", aws.url,
        "--poll-interval", "0.01",
    ]  # fmt: skip
    result = run(deploy, tmp_path, env)
    assert "CREATE_COMPLETE" in result.stdout
    outputs = stack_outputs(aws, "fluidity-lambda")
    assert outputs["ApiUrl"].startswith("https://")
    assert stack_outputs(aws, "fluidity-fargate")["ServiceName"] == "fluidity-server"
    # The zip built from the installed package is the one this checkout builds.
    digest = hashlib.sha256(lambda_zip_bytes()).hexdigest()[:16]
    assert f"sha256 {digest}" in result.stdout
    assert (tmp_path / "fluidity-agent.yaml").is_file()
