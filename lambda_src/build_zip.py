"""Build the control-plane Lambda package: a zip of `fluidity_lambda/`, byte-for-byte reproducible.

    python lambda_src/build_zip.py --out dist/lambda.zip

The same sources give the same bytes (entries sorted, timestamps 1980-01-01, mode 0644, no
bytecode or hidden files, fixed compression), so the zip's SHA-256, printed at the end, says
whether a deployment would change anything. Only the standard library: runs with any Python
>= 3.11 and installs nothing. (The deflate stream comes from zlib: another zlib version may
compress differently.)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent
PACKAGE = "fluidity_lambda"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
#: A regular file, rw-r--r--, in the upper 16 bits of external_attr (as Unix zip tools do).
FILE_MODE = 0o100644
_UNIX = 3
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def package_files(source: Path = SOURCE) -> list[tuple[str, Path]]:
    """(name in the zip, path) of every file of the package, sorted by name."""
    root = source / PACKAGE
    if not (root / "__init__.py").is_file():
        raise FileNotFoundError(f"no package at {root}")
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(source)
        if (
            not path.is_file()
            or path.suffix in _SKIPPED_SUFFIXES
            or any(part == "__pycache__" or part.startswith(".") for part in relative.parts)
        ):
            continue
        files.append((relative.as_posix(), path))
    return sorted(files)


def zip_bytes(source: Path = SOURCE) -> bytes:
    """The zip's content, built in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, path in package_files(source):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.create_system = _UNIX
            info.external_attr = FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return buffer.getvalue()


def build(out: Path, source: Path = SOURCE) -> str:
    """Write the zip to `out` (replacing it whole, never half-written); its SHA-256."""
    data = zip_bytes(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, out)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dist/lambda.zip"), help="zip to write")
    args = parser.parse_args(argv)
    digest = build(args.out)
    print(f"{args.out}  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
