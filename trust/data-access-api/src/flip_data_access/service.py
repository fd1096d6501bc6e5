"""The cohort rules of one trust: validate, run, gate.  Routes call these and shape nothing else."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flip_core.cohort import (
    CohortErrorCode,
    CohortQueryPayload,
    CohortSnapshotInfo,
    CohortStatistics,
    ColumnCounts,
    Distribution,
    GatedCount,
    PersistCohortPayload,
)
from flip_core.cohort_sql import CohortSqlError, ValidatedQuery, validate_cohort_sql
from flip_data_access.gate import KEY_SPACE, BelowThreshold, Cell, DisclosureGate
from flip_data_access.omop import CohortError, OmopDatabase, output_columns
from flip_data_access.snapshot import SnapshotMeta, SnapshotStore
from flip_data_access.statistics import SUMMARY_READY, parse_cells, statistics_sql

log = logging.getLogger(__name__)

ACCESSION_COLUMN = "accession_id"


def validated(sql_text: str) -> ValidatedQuery:
    """The security boundary: only the validator's re-emitted SQL is ever executed."""
    try:
        return validate_cohort_sql(sql_text)
    except CohortSqlError as exc:
        raise CohortError(CohortErrorCode.INVALID_QUERY, exc.detail) from exc


@dataclass
class CohortService:
    db: OmopDatabase
    gate: DisclosureGate
    snapshots: SnapshotStore
    seed: int

    async def statistics(self, request: CohortQueryPayload) -> CohortStatistics:
        """Gated aggregates of the cohort: its size, per-column completeness, sex, age and modality."""
        query = validated(request.sql)
        k = self.gate.effective_k(request.min_k)
        async with self.db.read_only() as conn:
            columns = await output_columns(conn, query.sql)
            ready = await (await conn.execute(SUMMARY_READY)).fetchone()
            summary = bool(ready and ready[0])
            cur = await conn.execute(statistics_sql(query.sql, columns, self.seed, summary=summary))
            row = await cur.fetchone()
        assert row is not None  # an aggregate query always returns its one row
        cells = parse_cells(row, columns)
        gate = self.gate
        return CohortStatistics(
            query_id=request.query_id,
            record_count=gate.release(cells.total, k),
            k=k,
            columns=[
                ColumnCounts(
                    column=name, non_null=gate.release(cells.non_null[name], k), null=gate.release(cells.null[name], k)
                )
                for name in columns
            ],
            distributions=[
                Distribution(name="sex", buckets=gate.distribution(cells.sex, k)),
                Distribution(name="age_band", buckets=gate.distribution(cells.age, k)),
                Distribution(
                    name="modality", buckets=gate.distribution(cells.modality_cells(), k, union=cells.any_modality)
                ),
            ],
            computed_at=datetime.now(UTC),
        )

    async def freeze(self, request: PersistCohortPayload) -> CohortSnapshotInfo:
        """Freeze the approved cohort (idempotent) and describe it with gated counts and its digest."""
        k = self.gate.effective_k(request.min_k)
        meta = self.snapshots.meta(request.project_id)
        if meta is None:
            query = validated(request.sql)
            async with self.db.read_only() as conn:
                columns = await output_columns(conn, query.sql)
                meta, created = await self.snapshots.freeze(
                    conn,
                    project_id=request.project_id,
                    query_id=request.query_id,
                    cohort_sql=query.sql,
                    columns=columns,
                    seed=self.seed,
                    k=k,
                )
            if created and meta.persons < k:
                # Too small to ever serve: keep nothing, so that a later attempt starts afresh.
                self.snapshots.discard(request.project_id)
            elif created:
                log.info("cohort frozen", extra={"project_id": str(request.project_id), "rows": meta.rows})
        self._check_rows(meta, k)
        return self._describe(meta, k)

    def _describe(self, meta: SnapshotMeta, k: int) -> CohortSnapshotInfo:
        persons = Cell(meta.persons, meta.person_key)
        # The row count gets its own cell key, derived from the persons' key and the count itself.
        rows = Cell(meta.rows, (meta.person_key * 31 + meta.rows) % KEY_SPACE)
        return CohortSnapshotInfo(
            project_id=meta.project_id,
            query_id=meta.query_id,
            persons=self.gate.release(persons, k),
            rows=self.gate.release(rows, k),
            k=k,
            columns=meta.columns,
            sha256=meta.parquet_sha256,
            created_at=meta.created_at,
        )

    def dataframe(self, project_id: uuid.UUID, columns: list[str] | None) -> dict[str, list[Any]]:
        """Row-level training data of an approved project, from its snapshot only, never below ``k``."""
        meta, table = self.snapshots.read(project_id, columns)
        self._check_rows(meta)
        return {name: table.column(name).to_pylist() for name in table.column_names}

    def accession_ids(self, project_id: uuid.UUID) -> list[str]:
        """The imaging accession ids of an approved project's frozen cohort (distinct, in order)."""
        meta = self.snapshots.meta(project_id)
        if meta is not None and ACCESSION_COLUMN not in meta.columns:
            raise CohortError(
                CohortErrorCode.UNKNOWN_COLUMN, f"the frozen cohort has no {ACCESSION_COLUMN} column to find studies by"
            )
        meta, table = self.snapshots.read(project_id, [ACCESSION_COLUMN])
        self._check_rows(meta)
        seen: dict[str, None] = {}
        for value in table.column(ACCESSION_COLUMN).to_pylist():
            if value is not None and str(value).strip():
                seen.setdefault(str(value).strip(), None)
        return list(seen)

    def study_counts(
        self, project_id: uuid.UUID, groups: dict[str, list[str]], min_k: int | None
    ) -> tuple[int, dict[str, GatedCount]]:
        """Gated counts of distinct persons behind each group of accession ids of a frozen cohort.

        The imaging-api reports its per-state study counts through here: one gate for every number that
        leaves the trust.  Accession ids not in the frozen cohort count for nobody.
        """
        k = self.gate.effective_k(min_k)
        meta, raw = self.snapshots.record_keys(project_id, ACCESSION_COLUMN)
        self._check_rows(meta, k)
        by_accession = {str(accession).strip(): person for accession, person in raw.items()}
        counts: dict[str, GatedCount] = {}
        for label, accessions in groups.items():
            persons = {by_accession[a][0]: by_accession[a][1] for a in accessions if a in by_accession}
            counts[label] = self.gate.release(Cell(len(persons), sum(persons.values()) % KEY_SPACE), k)
        return k, counts

    def _check_rows(self, meta: SnapshotMeta, k: int | None = None) -> None:
        """Refuse row-level use of a snapshot under the threshold it was frozen with (or the trust's now)."""
        try:
            self.gate.check_rows(meta.persons, max(k or 0, meta.k, self.gate.trust_k))
        except BelowThreshold as exc:
            raise CohortError(CohortErrorCode.BELOW_THRESHOLD, str(exc), status=403) from exc
