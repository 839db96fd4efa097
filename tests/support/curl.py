"""curl as the tests' real HTTP client (through the agent with `-x`, or straight to a server)."""

from __future__ import annotations

import trio


async def curl(*args: str) -> tuple[int, str, str]:
    """Run `curl -sS --max-time 30 ARGS`: its exit status, stdout and stderr."""
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "30", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()
