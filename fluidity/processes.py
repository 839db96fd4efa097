"""Supervising our own child processes: stopping them politely.

Their ready file (how they say they listen) is `fluidity.readyfile`.
"""

from __future__ import annotations

import signal

import trio


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
