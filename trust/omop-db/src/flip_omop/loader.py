"""Bulk loading of a synthetic dataset: generate, stream through ``COPY``, index, analyse.

Each table is loaded on its own connection inside its own transaction: ``TRUNCATE``, drop the
table's secondary indexes, one ``COPY ... (FORMAT binary, FREEZE)`` fed block by block as the
generator produces it, rebuild the indexes from their saved definitions, ``ANALYZE``.  Only when
every table has loaded are the transactions committed, so a failed load leaves the previous data
and indexes as they were.  Running the tables side by side lets the server ingest on every core
while this process generates the next block; ``FREEZE`` (allowed because the table was truncated
in the same transaction) spares the first reader from rewriting every page to set hint bits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.copy import Copy, QueuedLibpqWriter

from flip_omop import pgbinary
from flip_omop.columns import Column, GeneratedTable
from flip_omop.concepts import VALID_END, VALID_START, vocabulary
from flip_omop.generator import generate_blocks
from flip_omop.profiles import TrustProfile, get_profile
from flip_omop.schema import OMOP_SCHEMA, TABLES, create_schema, refresh_person_summary

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[Any, ...]]


class SchemaNotEmptyError(RuntimeError):
    """``load_synthetic`` was asked to load into tables that already hold rows (pass ``replace=True``)."""


@dataclass(frozen=True)
class LoadSummary:
    """What a load wrote and how long it took."""

    profile: str
    persons: int
    seed: int
    rows: Mapping[str, int]
    seconds: float
    """Wall time of the whole load."""
    copy_seconds: float
    """Generating and streaming the rows (the two overlap)."""
    index_seconds: float
    """Rebuilding the secondary indexes and ANALYZE."""
    details: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for the CLI)."""
        return {
            "profile": self.profile,
            "persons": self.persons,
            "seed": self.seed,
            "rows": dict(self.rows),
            "seconds": round(self.seconds, 2),
            "copy_seconds": round(self.copy_seconds, 2),
            "index_seconds": round(self.index_seconds, 2),
        }


def non_empty_tables(conninfo: str) -> list[str]:
    """The tables of schema ``omop`` that hold at least one row (the schema must exist)."""
    with psycopg.connect(conninfo) as conn:
        return _non_empty(conn)


def _non_empty(conn: Connection) -> list[str]:
    checks = sql.SQL(", ").join(
        sql.SQL("EXISTS (SELECT 1 FROM {})").format(sql.Identifier(OMOP_SCHEMA, table)) for table in TABLES
    )
    row = conn.execute(sql.SQL("SELECT {}").format(checks)).fetchone()
    return [table for table, filled in zip(TABLES, row or (), strict=True) if filled]


@dataclass
class _TableLoad:
    """One table's connection, its saved index definitions and its open COPY."""

    table: str
    conn: Connection
    index_definitions: list[str]
    copy: Copy | None = None
    rows: int = 0


def _open_table(conninfo: str, table: str) -> _TableLoad:
    conn = psycopg.connect(conninfo)
    try:
        return _prepare_table(conn, table)
    except BaseException:
        conn.close()
        raise


def _prepare_table(conn: Connection, table: str) -> _TableLoad:
    """Empty the table and drop its secondary indexes, keeping their definitions for later."""
    # The data is reproducible from its seed, so a commit need not wait for the WAL flush; the
    # bigger maintenance_work_mem lets index builds sort in memory.
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET maintenance_work_mem = '256MB'")
    conn.execute("SET lock_timeout = '60s'")
    target = sql.Identifier(OMOP_SCHEMA, table)
    conn.execute(sql.SQL("TRUNCATE {}").format(target))
    rows = conn.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = %s::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY 1
        """,
        (f"{OMOP_SCHEMA}.{table}",),
    ).fetchall()
    for name, _ in rows:
        # regclass::text is already a correctly quoted, schema-qualified name.
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    return _TableLoad(table, conn, [definition for _, definition in rows])


def _start_copy(load: _TableLoad, columns: tuple[str, ...], stack: ExitStack) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary, FREEZE true)").format(
        sql.Identifier(OMOP_SCHEMA, load.table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    cursor = stack.enter_context(load.conn.cursor())
    # The queued writer sends from a background thread, so the next block is generated meanwhile.
    load.copy = stack.enter_context(cursor.copy(statement, writer=QueuedLibpqWriter(cursor)))
    load.copy.write(pgbinary.COPY_HEADER)


def _write(load: _TableLoad, table: GeneratedTable) -> None:
    if table.rows == 0:
        return
    if load.copy is None:
        raise RuntimeError(f"COPY into {load.table} was not started")
    load.copy.write(table.encode().data)
    load.rows += table.rows


def _concept_rows() -> GeneratedTable:
    concepts = vocabulary()
    count = len(concepts)

    def text(values: list[str | None], name: str) -> Column:
        nulls = np.array([v is None for v in values])
        encoded = np.array([(v or "").encode() for v in values], dtype=np.bytes_)
        return Column(name, "text", encoded, nulls if nulls.any() else None)

    return GeneratedTable(
        "concept",
        (
            Column("concept_id", "int4", np.array([c.concept_id for c in concepts], dtype=np.int64)),
            text([c.concept_name for c in concepts], "concept_name"),
            text([c.domain_id for c in concepts], "domain_id"),
            text([c.vocabulary_id for c in concepts], "vocabulary_id"),
            text([c.concept_class_id for c in concepts], "concept_class_id"),
            text([c.standard_concept for c in concepts], "standard_concept"),
            text([c.concept_code for c in concepts], "concept_code"),
            Column("valid_start_date", "date", np.full(count, np.datetime64(VALID_START, "D"))),
            Column("valid_end_date", "date", np.full(count, np.datetime64(VALID_END, "D"))),
        ),
    )


def _finish(load: _TableLoad) -> float:
    """Rebuild the table's indexes and analyse it (inside its still-open transaction)."""
    started = time.perf_counter()
    for definition in load.index_definitions:
        load.conn.execute(definition)  # pg_get_indexdef output: server-generated, not user input
    load.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(OMOP_SCHEMA, load.table)))
    return time.perf_counter() - started


def load_synthetic(
    conninfo: str,
    persons: int,
    seed: int,
    profile: TrustProfile | str,
    *,
    replace: bool = False,
) -> LoadSummary:
    """Generate the dataset ``(profile, persons, seed)`` and bulk-load it into schema ``omop``.

    Creates the schema if needed.  Refuses (:class:`SchemaNotEmptyError`) when any OMOP table
    already holds rows, unless ``replace`` is true; then every table is emptied and reloaded,
    ``omop.concept`` included.  The load is all-or-nothing per table and committed only after
    every table has loaded.  Returns the row count per table and the time taken.
    """
    chosen = get_profile(profile) if isinstance(profile, str) else profile
    if persons < 1 or seed < 0:
        raise ValueError("persons must be at least 1 and seed non-negative")
    started = time.perf_counter()
    create_schema(conninfo)
    with psycopg.connect(conninfo) as conn:
        filled = _non_empty(conn)
    if filled and not replace:
        raise SchemaNotEmptyError(
            f"schema {OMOP_SCHEMA} already holds data (in {', '.join(filled)}); pass replace=True to reload it"
        )

    with ExitStack() as connections:
        loads: dict[str, _TableLoad] = {}
        for table in TABLES:
            load = _open_table(conninfo, table)
            connections.callback(load.conn.close)
            loads[table] = load

        with ExitStack() as copies:
            concept = _concept_rows()
            _start_copy(loads["concept"], concept.column_names, copies)
            _write(loads["concept"], concept)
            for block in generate_blocks(chosen, persons, seed):
                for name, rows in block.items():
                    if loads[name].copy is None:
                        _start_copy(loads[name], rows.column_names, copies)
                    _write(loads[name], rows)
            for load in loads.values():
                if load.copy is not None:
                    load.copy.write(pgbinary.COPY_TRAILER)
        copied = time.perf_counter()
        log.info("synthetic rows copied", extra={"persons": persons, "seconds": round(copied - started, 2)})

        workers = max(1, min(len(loads), os.cpu_count() or 1, 8))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="omop-index") as pool:
            index_times = dict(zip(loads, pool.map(_finish, loads.values()), strict=True))
        indexed = time.perf_counter()
        for load in loads.values():
            load.conn.commit()
    refresh_person_summary(conninfo)

    finished = time.perf_counter()
    summary = LoadSummary(
        profile=chosen.name,
        persons=persons,
        seed=seed,
        rows={name: load.rows for name, load in loads.items()},
        seconds=finished - started,
        copy_seconds=copied - started,
        index_seconds=indexed - copied,
        details={f"index_{name}": round(t, 3) for name, t in index_times.items()},
    )
    log.info("synthetic OMOP data loaded", extra=summary.as_dict())
    return summary
