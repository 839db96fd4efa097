"""Summaries of py-spy `--format raw` profiles (collapsed stacks: `frame;frame;... count`).

For each file: the hottest leaf frames (where the CPU is, any code), the fluidity line each
sample is spent under (the innermost frame in `fluidity/`, including the library code it
calls), and the inclusive share of fluidity functions. `python -m tests.bench.profile_summary
DIR_OR_FILES...` prints them; the bench prints them after a `--profile` run.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
PACKAGE = "fluidity/"


def _parse(frame: str) -> tuple[str, str, int]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, "", 0
    return match["func"], match["file"], int(match["line"])


def _short(path: str) -> str:
    """site-packages/... and /work/main/... down to the package-relative path."""
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    index = path.find(PACKAGE)
    return path[index:] if index >= 0 else path


def summarise(path: Path, top: int = 15) -> str:
    leaf: Counter[str] = Counter()
    owner: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_parse(f) for f in stack.split(";")]
        func, file, line = frames[-1]
        leaf[f"{_short(file)}:{line} {func}"] += count
        mine = "(outside fluidity: event loop, TLS, sockets)"
        for func, file, line in reversed(frames):
            if PACKAGE in file:
                mine = f"{_short(file)}:{line} {func}"
                break
        owner[mine] += count
        seen = {f"{_short(file)} {func}" for func, file, _ in frames if PACKAGE in file}
        for key in seen:
            inclusive[key] += count
    if not total:
        return f"== {path.name}: no samples"

    def block(title: str, counter: Counter[str]) -> list[str]:
        lines = [f"  {title}"]
        for key, count in counter.most_common(top):
            lines.append(f"    {100 * count / total:5.1f}%  {key}")
        return lines

    # Entry points (__main__, cli, the trio.run call) are on every stack: they say nothing.
    inclusive = Counter({k: v for k, v in inclusive.items() if v < total})
    out = [f"== {path.name}: {total} samples"]
    out += block("hottest leaf frames (self time):", leaf)
    out += block("time under each fluidity line (innermost fluidity/ frame):", owner)
    out += block("inclusive time of fluidity functions (below the entry points):", inclusive)
    return "\n".join(out)


def summarise_dir(directory: Path, top: int = 15) -> str:
    files = sorted(directory.glob("*.txt"))
    files = [f for f in files if f.name != "summary.txt"]
    text = "\n\n".join(summarise(f, top) for f in files) or f"no profiles in {directory}"
    (directory / "summary.txt").write_text(text + "\n")
    return f"profiles in {directory} (summary.txt):\n\n{text}"


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["."]:
        target = Path(arg)
        print(summarise_dir(target) if target.is_dir() else summarise(target))
