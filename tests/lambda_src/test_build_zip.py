"""The Lambda zip: reproducible to the byte, nothing stray in it, and complete on its own.

Completeness is shown by importing the handlers from the built zip (zipimport), with the
source tree's copy and the `fluidity` package out of reach, and running them against moto.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import build_zip
import pytest

from tests.lambda_src.conftest import LAMBDA_SRC, NOW, Cloud

MODULES = {"__init__", "common", "wake", "status", "sleep", "kill"}
HANDLERS = ("wake", "status", "sleep", "kill")


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    first = build_zip.build(tmp_path / "a" / "lambda.zip")
    second = build_zip.build(tmp_path / "b" / "lambda.zip")
    assert (tmp_path / "a" / "lambda.zip").read_bytes() == (
        tmp_path / "b" / "lambda.zip"
    ).read_bytes()
    assert (
        first == second == hashlib.sha256((tmp_path / "a" / "lambda.zip").read_bytes()).hexdigest()
    )


def test_entries_are_sorted_dated_1980_and_0644(tmp_path: Path) -> None:
    out = tmp_path / "lambda.zip"
    build_zip.build(out)
    with zipfile.ZipFile(out) as archive:
        infos = archive.infolist()
        assert archive.testzip() is None
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert {Path(name).stem for name in names} == MODULES
    assert all(name.startswith("fluidity_lambda/") for name in names)
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o100644
        assert info.create_system == 3
        assert info.compress_type == zipfile.ZIP_DEFLATED


def test_bytecode_and_hidden_files_are_left_out(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(LAMBDA_SRC / "fluidity_lambda", source / "fluidity_lambda")
    package = source / "fluidity_lambda"
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "common.cpython-311.pyc").write_bytes(b"\x00")
    (package / "stray.pyc").write_bytes(b"\x00")
    (package / ".swp").write_text("editor")
    names = [name for name, _ in build_zip.package_files(source)]
    assert {Path(name).stem for name in names} == MODULES
    # ... and the result does not depend on what else lies around.
    assert build_zip.zip_bytes(source) == build_zip.zip_bytes(LAMBDA_SRC)


def test_no_package_no_zip(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no package"):
        build_zip.build(tmp_path / "lambda.zip", source=tmp_path)


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "dist" / "lambda.zip"
    done = subprocess.run(
        [sys.executable, str(LAMBDA_SRC / "build_zip.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert done.stdout.strip() == f"{out}  sha256 {digest}"
    assert out.read_bytes() == build_zip.zip_bytes()
    assert not out.with_name("lambda.zip.partial").exists()


def test_package_never_imports_fluidity(tmp_path: Path) -> None:
    """The zip ships alone: an import of the main package would fail in Lambda."""
    out = tmp_path / "lambda.zip"
    build_zip.build(out)
    with zipfile.ZipFile(out) as archive:
        for name in archive.namelist():
            tree = ast.parse(archive.read(name), name)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported = [node.module or ""]
                else:
                    continue
                for module in imported:
                    top = module.split(".")[0]
                    assert top in {"boto3", "botocore"} or top in sys.stdlib_module_names, (
                        f"{name} imports {module}: only the standard library and boto3 exist there"
                    )


@contextmanager
def imported_from(archive: Path) -> Iterator[dict[str, ModuleType]]:
    """The handler modules imported from `archive` alone; everything is put back afterwards."""

    def ours(name: str) -> bool:
        return name.split(".")[0] in {"fluidity_lambda", "fluidity"}

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules["fluidity"] = None  # type: ignore[assignment]  # importing it raises
    sys.path.insert(0, str(archive))
    importlib.invalidate_caches()
    try:
        yield {
            name: importlib.import_module(f"fluidity_lambda.{name}")
            for name in ("common", *HANDLERS)
        }
    finally:
        sys.path.remove(str(archive))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
        importlib.invalidate_caches()


def test_handlers_run_from_the_zip(
    tmp_path: Path, cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lambda.zip"
    build_zip.build(out)
    with imported_from(out) as modules:
        for module in modules.values():
            assert module.__file__ is not None
            assert module.__file__.startswith(str(out)), module.__file__
        common = modules["common"]
        monkeypatch.setattr(common, "now", lambda: NOW)

        assert modules["status"].handler({}, None)["state"] == "stopped"
        assert modules["wake"].handler({}, None)["action"] == "waking"
        cloud.set_counts(running=1)
        task = cloud.start_task(created=NOW - 60)
        status = modules["status"].handler({"httpMethod": "GET", "requestContext": {}}, None)
        assert status["statusCode"] == 200
        assert f'"address": "{cloud.public_ip(task)}"' in status["body"]
        assert modules["sleep"].handler({}, None)["action"] == "kept_awake"
        assert modules["kill"].handler({"reason": "test"}, None)["action"] == "killed"
        assert cloud.desired_count() == 0
    # The source tree's package is back in place for the other tests.
    assert (sys.modules["fluidity_lambda.common"].__file__ or "").startswith(str(LAMBDA_SRC))
