"""The ready file: how a started process tells its supervisor (or a test) where it listens."""

from __future__ import annotations

import json
import os
from typing import Any


def write_ready_file(path: str | None, info: dict[str, Any]) -> None:
    """Write `info` as JSON to `path` atomically (rename), if a path is configured."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)
