"""Supervising our own child processes: their ready file, and stopping them politely."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import trio

#: How often a ready file another process will write is looked for.
POLL_INTERVAL = 0.02


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


async def stop_process(process: trio.Process, grace: float) -> int:
    """SIGTERM (our processes drain on it), SIGKILL after `grace` s; returns the exit code.

    Shielded: stopping a child must finish even when the caller is being cancelled.
    """
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            process.kill()
        code: int = await process.wait()
    return code
