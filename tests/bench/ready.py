"""The ready file the bench's helper programs write once they listen (see run_fluidity)."""

from __future__ import annotations

import json
import os
from typing import Any


def write_ready(path: str, info: dict[str, Any]) -> None:
    """Write `info` and our pid as JSON to `path`, atomically (the bench polls for the file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)
