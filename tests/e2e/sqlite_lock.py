"""A real SQLite write lock held by ANOTHER process: `python -c` with the stdlib sqlite3 running
`BEGIN EXCLUSIVE` on a database file until told to let go (a line on its stdin), as a long
`spoofwatch outbox purge` or an operator's sqlite3 shell would."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

_SCRIPT = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
db.close()
print("released", flush=True)
"""


class SqliteLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> SqliteLock:
        await self.hold()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    async def hold(self) -> None:
        """Returns once the other process holds the lock."""
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _SCRIPT, str(self.path),
                                                         stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            line = await self.proc.stdout.readline()
        assert line.strip() == b"locked", line

    async def release(self) -> None:
        """Returns once the other process let go of the lock (and exited)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        if proc.returncode is None:
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            async with asyncio.timeout(30):
                assert (await proc.stdout.readline()).strip() == b"released"
                await proc.wait()
