"""The agent's durable outbox: results the hub has not acknowledged yet, in a local SQLite file.

A result is written here *before* it is posted and removed only once the hub acknowledges it (or
refuses it for good), so a hub outage or an agent restart loses nothing: pending results are replayed
at start and retried by the drain loop.  The outbox also remembers recently settled task ids with
their lease tokens, so that a task the hub hands out again is answered from what is already known
instead of being executed a second time: a result the hub refused as stale (its lease had run out and
the task was being handed out again) is kept for a while, and answers the task if it comes back here.

SQLite runs in WAL mode with ``synchronous=FULL`` (a committed result survives a power cut); every
call runs in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from flip_core.tasks import TaskResult

OUTBOX_FILE = "outbox.sqlite3"
SCHEMA_VERSION = 1
DEFAULT_REMEMBER = 10_000
REUSE_WINDOW_S = 24 * 3600
"""How long a result refused as stale stays available to answer the same task if it returns here."""

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    task_id     TEXT PRIMARY KEY,
    lease_token TEXT NOT NULL,
    body        TEXT NOT NULL,
    stored_at   REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE TABLE IF NOT EXISTS settled (
    task_id     TEXT PRIMARY KEY,
    lease_token TEXT NOT NULL,
    status      TEXT NOT NULL,
    settled_at  REAL NOT NULL,
    body        TEXT
);
"""


class Claim(StrEnum):
    """What to do with a task the hub has just leased, given what the outbox knows about it."""

    EXECUTE = "execute"
    """Nothing known (or a retry of a finished attempt): run the handler."""
    REPLAY = "replay"
    """A result is already waiting for this task; it now carries the new lease token and will be posted."""
    DUPLICATE = "duplicate"
    """This very lease was already answered and acknowledged; nothing to do."""


@dataclass(frozen=True)
class OutboxEntry:
    """One result waiting for the hub's acknowledgement."""

    task_id: uuid.UUID
    result: TaskResult
    stored_at: datetime
    attempts: int
    last_error: str | None


class Outbox:
    """A SQLite-backed outbox; open it with :meth:`open`, close it with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, remember: int) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.remember = remember

    @classmethod
    async def open(cls, path: Path, *, remember: int = DEFAULT_REMEMBER) -> Outbox:
        """Open (creating if needed) the outbox file at ``path``, private to this user."""
        return await asyncio.to_thread(cls._open_sync, path, remember)

    @classmethod
    def _open_sync(cls, path: Path, remember: int) -> Outbox:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # Results may hold aggregate numbers about patients: readable by the agent's user only.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{path} was written by a newer agent (schema {version} > {SCHEMA_VERSION}); upgrade the agent"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, remember)

    async def close(self) -> None:
        """Close the file (checkpointing the WAL)."""
        await self._run(self._conn.close)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        def locked() -> _T:
            with self._lock:
                return fn()

        return await asyncio.to_thread(locked)

    async def put(self, task_id: uuid.UUID, result: TaskResult) -> None:
        """Store (or replace) the result for ``task_id``; durable when this returns."""
        body = result.model_dump_json(exclude={"lease_token"})

        def write() -> None:
            self._conn.execute(
                "INSERT INTO outbox (task_id, lease_token, body, stored_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(task_id) DO UPDATE SET lease_token=excluded.lease_token, body=excluded.body, "
                "stored_at=excluded.stored_at, attempts=0, last_error=NULL",
                (str(task_id), result.lease_token, body, time.time()),
            )

        await self._run(write)

    async def ack(self, task_id: uuid.UUID, lease_token: str, status: str) -> bool:
        """The hub acknowledged the result posted with ``lease_token``: forget it, remember it was settled.

        Returns False (and changes nothing) if the entry now carries another token — it was re-leased
        meanwhile and the newer token still has to be delivered.
        """
        return await self._run(lambda: self._settle(task_id, lease_token, status))

    async def drop(self, task_id: uuid.UUID, lease_token: str, reason: str, *, reusable: bool = False) -> bool:
        """The hub will not accept this result under this token: remove it from the outbox, noting why.

        With ``reusable`` the result is kept (for :data:`REUSE_WINDOW_S`) so that, if the hub hands the
        same task to this agent again, :meth:`claim` answers it with this result instead of running it.
        """
        return await self._run(lambda: self._settle(task_id, lease_token, f"dropped:{reason}", keep_body=reusable))

    def _settle(self, task_id: uuid.UUID, lease_token: str, status: str, *, keep_body: bool = False) -> bool:
        with self._transaction():
            key = (str(task_id), lease_token)
            row = self._conn.execute("SELECT body FROM outbox WHERE task_id=? AND lease_token=?", key).fetchone()
            if row is None:
                return False
            self._conn.execute("DELETE FROM outbox WHERE task_id=? AND lease_token=?", key)
            now = time.time()
            self._conn.execute(
                "INSERT OR REPLACE INTO settled (task_id, lease_token, status, settled_at, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (str(task_id), lease_token, status, now, row[0] if keep_body else None),
            )
            # Keep only the most recent ``remember`` ids (rowids grow with each insert), and kept
            # results only within the reuse window.
            self._conn.execute(
                "DELETE FROM settled WHERE rowid <= (SELECT MAX(rowid) FROM settled) - ?", (self.remember,)
            )
            self._conn.execute(
                "UPDATE settled SET body=NULL WHERE body IS NOT NULL AND settled_at < ?", (now - REUSE_WINDOW_S,)
            )
            return True

    async def note_failure(self, task_id: uuid.UUID, reason: str) -> None:
        """Count a failed delivery attempt (for the operator's view of the outbox)."""

        def write() -> None:
            self._conn.execute(
                "UPDATE outbox SET attempts=attempts+1, last_error=? WHERE task_id=?", (reason[:500], str(task_id))
            )

        await self._run(write)

    async def pending(self) -> list[OutboxEntry]:
        """Every result not yet acknowledged, oldest first."""

        def read() -> list[tuple[str, str, str, float, int, str | None]]:
            return self._conn.execute(
                "SELECT task_id, lease_token, body, stored_at, attempts, last_error FROM outbox ORDER BY stored_at"
            ).fetchall()

        rows = await self._run(read)
        return [
            OutboxEntry(
                task_id=uuid.UUID(task_id),
                result=TaskResult.model_validate({**json.loads(body), "lease_token": token}),
                stored_at=datetime.fromtimestamp(stored_at, UTC),
                attempts=attempts,
                last_error=last_error,
            )
            for task_id, token, body, stored_at, attempts, last_error in rows
        ]

    async def size(self) -> int:
        """How many results wait for acknowledgement."""
        return await self._run(lambda: int(self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]))

    async def claim(self, task_id: uuid.UUID, lease_token: str) -> Claim:
        """Decide whether a freshly leased task must run, given the results this agent already holds.

        A task whose result is still waiting here (the hub re-leased it because the result has not
        arrived yet), or whose result was refused as stale but kept, is not executed again: that result
        is re-addressed to the new lease token and goes back into the outbox.
        """

        def decide() -> Claim:
            with self._transaction():
                row = self._conn.execute("SELECT lease_token FROM outbox WHERE task_id=?", (str(task_id),)).fetchone()
                if row is not None:
                    if row[0] != lease_token:
                        self._conn.execute(
                            "UPDATE outbox SET lease_token=?, attempts=0, last_error=NULL WHERE task_id=?",
                            (lease_token, str(task_id)),
                        )
                    return Claim.REPLAY
                done = self._conn.execute(
                    "SELECT lease_token, body FROM settled WHERE task_id=?", (str(task_id),)
                ).fetchone()
                if done is None:
                    return Claim.EXECUTE
                if done[0] == lease_token:
                    return Claim.DUPLICATE
                if done[1] is None:
                    return Claim.EXECUTE
                self._conn.execute(
                    "INSERT INTO outbox (task_id, lease_token, body, stored_at) VALUES (?, ?, ?, ?)",
                    (str(task_id), lease_token, done[1], time.time()),
                )
                self._conn.execute("DELETE FROM settled WHERE task_id=?", (str(task_id),))
                return Claim.REPLAY

        return await self._run(decide)

    async def settled_status(self, task_id: uuid.UUID) -> str | None:
        """How the last settled result for ``task_id`` ended (hub status or ``dropped:<reason>``), if remembered."""
        row = await self._run(
            lambda: self._conn.execute("SELECT status FROM settled WHERE task_id=?", (str(task_id),)).fetchone()
        )
        return str(row[0]) if row is not None else None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) on the autocommit connection."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
