"""The ready file: how a started process tells its supervisor (or a test) where it listens.

The process writes it once it listens (`write_ready_file`); whoever started the process waits
for it (`wait_ready_file`). Both sides are here so that the format has one home.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import trio

#: How often a ready file another process will write is looked for.
POLL_INTERVAL = 0.02


def write_ready_file(path: str | None, info: dict[str, Any]) -> None:
    """Write `info` as JSON to `path` atomically (rename), if a path is configured."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)


async def wait_ready_file(path: Path, process: trio.Process) -> dict[str, Any] | None:
    """The JSON `process` writes to `path` once it listens; None if it exits first.

    Bound it at the call site. Another process writes the file, so polling is the only way.
    """
    ready = trio.Path(path)
    while not await ready.exists():
        if process.poll() is not None:
            return None
        await trio.sleep(POLL_INTERVAL)
    info: dict[str, Any] = json.loads(await ready.read_text())
    return info
