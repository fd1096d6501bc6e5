"""The per-study state machine of imaging imports, kept durably in SQLite inside the trust.

Every study of a project's import is a row ``(project, accession)`` in one of the states of
:class:`~flip_core.imaging.StudyState`.  The allowed moves are the table :data:`TRANSITIONS`; a move
not in it raises :class:`InvalidStudyTransition` rather than being checked ad hoc by callers.  Each
non-terminal state has a deadline (:data:`DEFAULT_DEADLINES`): :meth:`StudyLedger.expire` fails every
study that outstayed it with ``timed_out``, so no study stays QUEUED, RETRIEVING or CONVERTING for
ever — not even after the process that was working on it died.

Workers take studies with :meth:`StudyLedger.claim`, which moves up to *n* QUEUED studies to
RETRIEVING in one transaction (bounded parallelism without two workers taking the same study).
Accession ids live only here, inside the trust; counts leave through the disclosure gate.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flip_core.imaging import StudyFailure, StudyState

TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    StudyState.QUEUED: frozenset({StudyState.RETRIEVING, StudyState.FAILED}),
    StudyState.RETRIEVING: frozenset({StudyState.CONVERTING, StudyState.READY, StudyState.FAILED}),
    StudyState.CONVERTING: frozenset({StudyState.READY, StudyState.FAILED}),
    StudyState.READY: frozenset({StudyState.FAILED}),  # its stored files were found damaged
    StudyState.FAILED: frozenset({StudyState.QUEUED}),  # a re-import
}
"""Every move a study may make; anything else is a bug and is refused."""

DEFAULT_DEADLINES: dict[StudyState, float] = {
    StudyState.QUEUED: 24 * 3600.0,
    StudyState.RETRIEVING: 30 * 60.0,
    StudyState.CONVERTING: 15 * 60.0,
}
"""Seconds a study may spend in each non-terminal state before it fails with ``timed_out``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    project_id TEXT NOT NULL,
    accession  TEXT NOT NULL,
    state      TEXT NOT NULL,
    reason     TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    entered_at REAL NOT NULL,
    deadline   REAL,
    PRIMARY KEY (project_id, accession)
);
CREATE INDEX IF NOT EXISTS studies_by_state ON studies (project_id, state);
CREATE INDEX IF NOT EXISTS studies_by_deadline ON studies (deadline) WHERE deadline IS NOT NULL;
CREATE TABLE IF NOT EXISTS imports (
    project_id TEXT PRIMARY KEY,
    to_nifti   INTEGER NOT NULL,
    created_at REAL NOT NULL,
    deleted_at REAL
);
"""


class InvalidStudyTransition(Exception):
    """A move the state machine does not allow (or a study that does not exist)."""


@dataclass(frozen=True)
class Study:
    project_id: uuid.UUID
    accession: str
    state: StudyState
    reason: StudyFailure | None
    attempts: int
    entered_at: float
    deadline: float | None


@dataclass(frozen=True)
class ImportRecord:
    """A project's import at this trust: its options, and whether its images were deleted."""

    project_id: uuid.UUID
    to_nifti: bool
    created_at: float
    deleted_at: float | None


class StudyLedger:
    """The studies of every project's import at this trust (one SQLite file, safe across threads)."""

    def __init__(self, path: Path, *, deadlines: dict[StudyState, float] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.deadlines = {**DEFAULT_DEADLINES, **(deadlines or {})}

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _deadline(self, state: StudyState, now: float) -> float | None:
        limit = self.deadlines.get(state)
        return None if state.terminal or limit is None else now + limit

    def enqueue(self, project_id: uuid.UUID, accessions: Iterable[str], *, now: float | None = None) -> int:
        """Add studies as QUEUED (an accession already in the import is left as it is); returns how many."""
        at = time.time() if now is None else now
        added = 0
        with self._tx() as db:
            for accession in dict.fromkeys(accessions):  # duplicates collapse, order kept
                cur = db.execute(
                    "INSERT OR IGNORE INTO studies (project_id, accession, state, entered_at, deadline) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (str(project_id), accession, StudyState.QUEUED.value, at, self._deadline(StudyState.QUEUED, at)),
                )
                added += cur.rowcount
        return added

    def claim(self, project_id: uuid.UUID, limit: int, *, now: float | None = None) -> list[Study]:
        """Move up to ``limit`` QUEUED studies (oldest first) to RETRIEVING and return them."""
        at = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute(
                "SELECT accession FROM studies WHERE project_id = ? AND state = ? ORDER BY entered_at, accession "
                "LIMIT ?",
                (str(project_id), StudyState.QUEUED.value, limit),
            ).fetchall()
            for (accession,) in rows:
                db.execute(
                    "UPDATE studies SET state = ?, entered_at = ?, deadline = ?, attempts = attempts + 1 "
                    "WHERE project_id = ? AND accession = ?",
                    (
                        StudyState.RETRIEVING.value,
                        at,
                        self._deadline(StudyState.RETRIEVING, at),
                        str(project_id),
                        accession,
                    ),
                )
        return [self.get(project_id, accession) for (accession,) in rows]

    def advance(
        self,
        project_id: uuid.UUID,
        accession: str,
        to: StudyState,
        *,
        reason: StudyFailure | None = None,
        now: float | None = None,
    ) -> Study:
        """Move one study to ``to`` if :data:`TRANSITIONS` allows it; FAILED needs a reason."""
        if (to is StudyState.FAILED) != (reason is not None):
            raise ValueError("a study fails with a reason, and only a failure has one")
        at = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM studies WHERE project_id = ? AND accession = ?", (str(project_id), accession)
            ).fetchone()
            if row is None:
                raise InvalidStudyTransition(f"no study {accession!r} in the import of project {project_id}")
            current = StudyState(row[0])
            if to not in TRANSITIONS[current]:
                raise InvalidStudyTransition(f"a study cannot go from {current.value} to {to.value}")
            db.execute(
                "UPDATE studies SET state = ?, reason = ?, entered_at = ?, deadline = ?, attempts = attempts + ? "
                "WHERE project_id = ? AND accession = ?",
                (
                    to.value,
                    reason.value if reason else None,
                    at,
                    self._deadline(to, at),
                    int(to is StudyState.RETRIEVING),  # every retrieval is an attempt
                    str(project_id),
                    accession,
                ),
            )
        return self.get(project_id, accession)

    def expire(self, *, now: float | None = None) -> int:
        """Fail every study that outstayed its state's deadline (``timed_out``); returns how many."""
        at = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute(
                "UPDATE studies SET state = ?, reason = ?, entered_at = ?, deadline = NULL "
                "WHERE deadline IS NOT NULL AND deadline < ?",
                (StudyState.FAILED.value, StudyFailure.TIMED_OUT.value, at, at),
            )
            return cur.rowcount

    def reimport(self, project_id: uuid.UUID, *, now: float | None = None) -> int:
        """Put every FAILED study of the project back in the queue; returns how many."""
        at = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute(
                "UPDATE studies SET state = ?, reason = NULL, entered_at = ?, deadline = ? "
                "WHERE project_id = ? AND state = ?",
                (
                    StudyState.QUEUED.value,
                    at,
                    self._deadline(StudyState.QUEUED, at),
                    str(project_id),
                    StudyState.FAILED.value,
                ),
            )
            return cur.rowcount

    def forget(self, project_id: uuid.UUID, *, now: float | None = None) -> int:
        """Drop the project's studies and mark its import deleted (the caller deletes the images).

        The import's record stays, so a later status says "deleted" rather than "never imported".
        """
        at = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE imports SET deleted_at = ? WHERE project_id = ?", (at, str(project_id)))
            return db.execute("DELETE FROM studies WHERE project_id = ?", (str(project_id),)).rowcount

    def open_import(self, project_id: uuid.UUID, *, to_nifti: bool, now: float | None = None) -> ImportRecord:
        """Record the project's import (again after a deletion); its options are those of the first call.

        ``to_nifti`` is fixed when the project is created at the hub, so a repeated call with the other
        value is a contradiction and is refused.
        """
        at = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO imports (project_id, to_nifti, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (project_id) DO UPDATE SET deleted_at = NULL",
                (str(project_id), int(to_nifti), at),
            )
        record = self.import_record(project_id)
        assert record is not None
        if record.to_nifti != to_nifti:
            raise ValueError("this project's import was opened with the other NIfTI setting")
        return record

    def import_record(self, project_id: uuid.UUID) -> ImportRecord | None:
        row = self._db.execute(
            "SELECT to_nifti, created_at, deleted_at FROM imports WHERE project_id = ?", (str(project_id),)
        ).fetchone()
        if row is None:
            return None
        return ImportRecord(project_id, bool(row[0]), float(row[1]), row[2])

    def queued_imports(self) -> list[ImportRecord]:
        """Live imports with studies still QUEUED (to resume after a restart)."""
        rows = self._db.execute(
            "SELECT i.project_id, i.to_nifti, i.created_at FROM imports i WHERE i.deleted_at IS NULL AND EXISTS "
            "(SELECT 1 FROM studies s WHERE s.project_id = i.project_id AND s.state = ?) ORDER BY i.created_at",
            (StudyState.QUEUED.value,),
        ).fetchall()
        return [ImportRecord(uuid.UUID(p), bool(n), float(c), None) for p, n, c in rows]

    def requeue_interrupted(self, *, now: float | None = None) -> int:
        """Put studies a dead process was working on (RETRIEVING, CONVERTING) back in the queue.

        Only for the start of the one process that owns this ledger: nothing else can be working on
        them then.  Their partial files were in staging folders, which the store clears at start.
        """
        at = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute(
                "UPDATE studies SET state = ?, reason = NULL, entered_at = ?, deadline = ? WHERE state IN (?, ?)",
                (
                    StudyState.QUEUED.value,
                    at,
                    self._deadline(StudyState.QUEUED, at),
                    StudyState.RETRIEVING.value,
                    StudyState.CONVERTING.value,
                ),
            )
            return cur.rowcount

    def accessions(self, project_id: uuid.UUID) -> dict[str, tuple[StudyState, StudyFailure | None]]:
        """Every study of the import: accession → (state, failure reason) — for the disclosure gate only."""
        return {
            accession: (StudyState(state), StudyFailure(reason) if reason else None)
            for accession, state, reason in self._db.execute(
                "SELECT accession, state, reason FROM studies WHERE project_id = ?", (str(project_id),)
            )
        }

    def get(self, project_id: uuid.UUID, accession: str) -> Study:
        row = self._db.execute(
            "SELECT state, reason, attempts, entered_at, deadline FROM studies WHERE project_id = ? AND accession = ?",
            (str(project_id), accession),
        ).fetchone()
        if row is None:
            raise InvalidStudyTransition(f"no study {accession!r} in the import of project {project_id}")
        state, reason, attempts, entered_at, deadline = row
        return Study(
            project_id,
            accession,
            StudyState(state),
            StudyFailure(reason) if reason else None,
            int(attempts),
            float(entered_at),
            deadline,
        )

    def counts(self, project_id: uuid.UUID) -> dict[StudyState, int]:
        """Studies per state (every state present, zero included) — raw, for the disclosure gate only."""
        counts = dict.fromkeys(StudyState, 0)
        for state, n in self._db.execute(
            "SELECT state, count(*) FROM studies WHERE project_id = ? GROUP BY state", (str(project_id),)
        ):
            counts[StudyState(state)] = int(n)
        return counts

    def failures(self, project_id: uuid.UUID) -> dict[StudyFailure, int]:
        """FAILED studies per reason — raw, for the disclosure gate only."""
        return {
            StudyFailure(reason): int(n)
            for reason, n in self._db.execute(
                "SELECT reason, count(*) FROM studies WHERE project_id = ? AND state = ? GROUP BY reason",
                (str(project_id), StudyState.FAILED.value),
            )
        }
