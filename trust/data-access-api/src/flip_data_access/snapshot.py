"""Frozen cohort snapshots: the approved cohort, run once and kept as parquet + metadata + digest.

Layout under the snapshot folder: ``<project id>/cohort.parquet`` and ``<project id>/meta.json``.  A
snapshot is written into a temporary folder beside it, flushed to disk and then renamed into place, so
a reader sees either no snapshot or a whole one — never half a file.  Row-level routes serve snapshots
only, after checking the parquet file against the digest in ``meta.json`` (a damaged snapshot is
refused, not served).  A snapshot, once there, is never replaced: freezing is idempotent.

The existence of a project's snapshot is also this trust's own record that it approved the project:
the hub sends ``persist_cohort`` only on approval, and nothing row-level is served without one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from flip_core.cohort import PERSON_COLUMN, CohortErrorCode
from flip_data_access.gate import KEY_SPACE
from flip_data_access.omop import CohortError
from flip_data_access.statistics import record_key

FORMAT_VERSION = 2
PARQUET = "cohort.parquet"
META = "meta.json"
_BATCH_ROWS = 50_000
RECORD_KEY = "__flip_record_key"
"""Hidden snapshot column: each row's person record key, so counts over the frozen cohort can be gated."""


@dataclass(frozen=True)
class SnapshotMeta:
    """What ``meta.json`` records (true counts stay inside the trust; the hub gets gated ones)."""

    project_id: uuid.UUID
    query_id: uuid.UUID
    query_sha256: str
    columns: list[str]
    rows: int
    persons: int
    person_key: int
    parquet_sha256: str
    bytes: int
    created_at: datetime
    k: int
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        body = {**self.__dict__, "project_id": str(self.project_id), "query_id": str(self.query_id)}
        body["created_at"] = self.created_at.isoformat()
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SnapshotMeta:
        body: dict[str, Any] = json.loads(text)
        body["project_id"] = uuid.UUID(body["project_id"])
        body["query_id"] = uuid.UUID(body["query_id"])
        body["created_at"] = datetime.fromisoformat(body["created_at"])
        return cls(**body)


def query_digest(cohort_sql: str) -> str:
    return hashlib.sha256(cohort_sql.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotStore:
    """Snapshots of approved cohorts under one folder."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Half-written snapshots of a process that died mid-freeze: never visible, removed at start.
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def folder(self, project_id: uuid.UUID) -> Path:
        return self.root / str(project_id)

    def discard(self, project_id: uuid.UUID) -> None:
        """Remove a snapshot (one frozen below the threshold is not kept)."""
        folder = self.folder(project_id)
        if folder.exists():
            doomed = self.root / f".tmp-discard-{project_id}-{uuid.uuid4().hex[:8]}"
            folder.rename(doomed)  # atomically gone for readers, then deleted
            shutil.rmtree(doomed, ignore_errors=True)

    def meta(self, project_id: uuid.UUID) -> SnapshotMeta | None:
        """The snapshot's metadata, or None when there is none (damage raises :class:`CohortError`)."""
        folder = self.folder(project_id)
        if not folder.exists():
            return None
        try:
            return SnapshotMeta.from_json((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CohortError(
                CohortErrorCode.INTERNAL_ERROR, "this trust's snapshot of the cohort is damaged", status=500
            ) from exc

    def _verified(self, project_id: uuid.UUID) -> tuple[SnapshotMeta, Path]:
        """The snapshot's metadata and parquet file, after checking the file against the recorded digest."""
        meta = self.meta(project_id)
        if meta is None:
            raise CohortError(
                CohortErrorCode.NOT_APPROVED,
                "this trust holds no frozen cohort for the project (it has not approved it)",
                status=403,
            )
        parquet = self.folder(project_id) / PARQUET
        if not parquet.exists() or _sha256(parquet) != meta.parquet_sha256:
            raise CohortError(
                CohortErrorCode.INTERNAL_ERROR, "this trust's snapshot of the cohort is damaged", status=500
            )
        return meta, parquet

    def _check_columns(self, meta: SnapshotMeta, columns: list[str]) -> None:
        unknown = sorted(set(columns) - set(meta.columns))
        if unknown:
            raise CohortError(CohortErrorCode.UNKNOWN_COLUMN, f"the frozen cohort has no column {unknown[0]!r}")

    def read(self, project_id: uuid.UUID, columns: list[str] | None = None) -> tuple[SnapshotMeta, pa.Table]:
        """The snapshot's rows, after checking them against the recorded digest."""
        meta, parquet = self._verified(project_id)
        self._check_columns(meta, columns or [])
        # The record-key column is never served: only :meth:`record_keys` reads it, for the gate.
        return meta, pq.read_table(parquet, columns=list(columns or meta.columns))

    def record_keys(self, project_id: uuid.UUID, column: str) -> tuple[SnapshotMeta, dict[Any, tuple[Any, int]]]:
        """``value of column → (person_id, record key)`` over the snapshot's rows (for gated counts)."""
        meta, parquet = self._verified(project_id)
        self._check_columns(meta, [column])
        table = pq.read_table(parquet, columns=[column, PERSON_COLUMN, RECORD_KEY])
        values, persons, keys = (table.column(name).to_pylist() for name in (column, PERSON_COLUMN, RECORD_KEY))
        rows = zip(values, persons, keys, strict=True)
        return meta, {v: (p, k) for v, p, k in rows if v is not None and p is not None}

    async def freeze(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        project_id: uuid.UUID,
        query_id: uuid.UUID,
        cohort_sql: str,
        columns: list[str],
        seed: int,
        k: int,
    ) -> tuple[SnapshotMeta, bool]:
        """Run the cohort once and store it atomically; ``(meta, created)`` — an existing one is kept."""
        existing = self.meta(project_id)
        if existing is not None:
            return existing, False
        tmp = self.root / f".tmp-{project_id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o700)
        try:
            meta = await self._write(conn, tmp, project_id, query_id, cohort_sql, columns, seed, k)
            final = self.folder(project_id)
            try:
                tmp.rename(final)
            except OSError:
                # Someone else froze it meanwhile: theirs stands.
                if (kept := self.meta(project_id)) is not None:
                    return kept, False
                raise
            _fsync_dir(self.root)
            return meta, True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    async def _write(
        self,
        conn: psycopg.AsyncConnection[Any],
        folder: Path,
        project_id: uuid.UUID,
        query_id: uuid.UUID,
        cohort_sql: str,
        columns: list[str],
        seed: int,
        k: int,
    ) -> SnapshotMeta:
        query = sql.SQL("SELECT cohort.*, {} AS {} FROM ({}) AS cohort").format(
            record_key(sql.SQL("cohort.{}").format(sql.Identifier(PERSON_COLUMN)), seed),
            sql.Identifier(RECORD_KEY),
            sql.SQL(cohort_sql),
        )
        parquet = folder / PARQUET
        rows = 0
        persons: dict[int, int] = {}
        writer: pq.ParquetWriter | None = None
        try:
            async for batch in _batches(conn, query):
                keys = batch[RECORD_KEY].to_pylist()
                for person, key in zip(batch[PERSON_COLUMN].to_pylist(), keys, strict=True):
                    if person is not None:
                        persons[person] = key
                table = pa.table({name: batch[name] for name in [*columns, RECORD_KEY]})
                if writer is None:
                    writer = pq.ParquetWriter(parquet, table.schema)
                writer.write_table(table)
                rows += table.num_rows
                if parquet.stat().st_size > self.max_bytes:
                    raise CohortError(
                        CohortErrorCode.SNAPSHOT_TOO_LARGE,
                        "the cohort is larger than this trust's snapshot limit; narrow the query",
                    )
            if writer is None:
                schema = [(name, pa.null()) for name in columns]
                writer = pq.ParquetWriter(parquet, pa.schema([*schema, (RECORD_KEY, pa.int64())]))
        finally:
            if writer is not None:
                writer.close()
        with parquet.open("rb+") as f:
            os.fsync(f.fileno())
        meta = SnapshotMeta(
            project_id=project_id,
            query_id=query_id,
            query_sha256=query_digest(cohort_sql),
            columns=columns,
            rows=rows,
            persons=len(persons),
            person_key=sum(persons.values()) % KEY_SPACE,
            parquet_sha256=_sha256(parquet),
            bytes=parquet.stat().st_size,
            created_at=datetime.now(UTC),
            k=k,
        )
        meta_path = folder / META
        with meta_path.open("w", encoding="utf-8") as f:
            f.write(meta.to_json())
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(folder)
        return meta


# PostgreSQL type OIDs → arrow types; anything else is stored as its text form.
_ARROW_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int64(),
    23: pa.int64(),
    700: pa.float64(),
    701: pa.float64(),
    1700: pa.float64(),
    25: pa.string(),
    1042: pa.string(),
    1043: pa.string(),
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}


def _arrow_column(values: list[Any], oid: int) -> pa.Array:
    kind = _ARROW_TYPES.get(oid)
    if kind is None:
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if oid == 1700:
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, type=kind)


async def _batches(conn: psycopg.AsyncConnection[Any], query: sql.Composed) -> AsyncIterator[dict[str, pa.Array]]:
    """Rows of ``query`` as typed column-wise batches, streamed through a server-side cursor."""
    async with conn.cursor(name="flip_snapshot") as cur:
        await cur.execute(query)
        described = [(d.name, d.type_code) for d in cur.description or ()]
        while True:
            rows = await cur.fetchmany(_BATCH_ROWS)
            if not rows:
                return
            yield {name: _arrow_column([row[i] for row in rows], oid) for i, (name, oid) in enumerate(described)}
