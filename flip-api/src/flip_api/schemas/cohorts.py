"""Request and response bodies of the cohort routes.

Statistics and gated counts are the wire contract's own models (:mod:`flip_core.cohort`), shown as the
trust sent them: the hub never reshapes a count into a bare number.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from flip_api.schemas.common import Name, Public, Strict
from flip_api.services.cohort_views import (
    CohortState,
    QueryHistory,
    ResultsView,
)
from flip_api.services.cohorts import SavedQuery
from flip_core.cohort import MAX_SQL_CHARS, CohortStatistics, GatedCount

CohortSql = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SQL_CHARS)]


class QueryIn(Strict):
    """A new version of the project's cohort query: a PostgreSQL SELECT over the OMOP CDM."""

    name: Name = Field("cohort", description="a label for this version")
    sql: CohortSql = Field(description="must return person_id; counts are of distinct persons")


class PrecheckIn(Strict):
    sql: CohortSql


class PrecheckOut(BaseModel):
    valid: bool
    rule: str | None = Field(description="the validator rule the query breaks, when it is not valid")
    detail: str | None = Field(description="what to change, when it is not valid")


class QueryOut(Public):
    id: uuid.UUID
    project_id: uuid.UUID
    version: int
    name: str
    sql: str
    created_by: uuid.UUID | None
    created_at: datetime


class SavedQueryOut(QueryOut):
    created: bool = Field(description="False when the SQL equals the latest version, which is returned unchanged")

    @classmethod
    def of(cls, saved: SavedQuery) -> SavedQueryOut:
        return cls(**QueryOut.model_validate(saved.query).model_dump(), created=saved.created)


class QueryHistoryOut(BaseModel):
    latest: QueryOut | None = Field(description="the query of record; null before the first save")
    versions: list[QueryOut] = Field(description="every saved version, newest first")

    @classmethod
    def of(cls, history: QueryHistory) -> QueryHistoryOut:
        return cls(
            latest=QueryOut.model_validate(history.latest) if history.latest else None,
            versions=[QueryOut.model_validate(q) for q in history.versions],
        )


class TrustResultOut(Public):
    trust_id: uuid.UUID
    trust_name: str
    trust_code: str
    state: CohortState
    record_count: GatedCount | None = Field(description="distinct persons; set when done or suppressed")
    statistics: CohortStatistics | None = Field(description="the trust's gated aggregates, when it answered")
    error_code: str | None = Field(description="why it failed or was cancelled (a safe category)")
    error_detail: str | None
    task_id: uuid.UUID | None
    attempt: int | None
    received_at: datetime | None


class ResultTotalsOut(BaseModel):
    record_count: int = Field(description="sum of the released counts; suppressed counts add nothing")
    trusts: int
    by_state: dict[CohortState, int]


class ResultsOut(BaseModel):
    query: QueryOut
    is_latest: bool = Field(description="whether this is the query of record")
    trusts: list[TrustResultOut]
    totals: ResultTotalsOut

    @classmethod
    def of(cls, view: ResultsView) -> ResultsOut:
        return cls(
            query=QueryOut.model_validate(view.query),
            is_latest=view.is_latest,
            trusts=[TrustResultOut.model_validate(t) for t in view.trusts],
            totals=ResultTotalsOut(
                record_count=view.totals.record_count, trusts=view.totals.trusts, by_state=view.totals.by_state
            ),
        )


class SnapshotOut(Public):
    """An approved trust's frozen cohort (gated counts and a digest), or where its freeze task stands."""

    trust_id: uuid.UUID
    trust_name: str
    trust_code: str
    state: CohortState | None = Field(description="the latest persist_cohort task's state; null if none was sent")
    task_id: uuid.UUID | None
    error_code: str | None
    query_id: uuid.UUID | None
    version: int | None
    persons: GatedCount | None
    rows: GatedCount | None
    sha256: str | None
    created_at: datetime | None = Field(description="when the trust froze it")
    recorded_at: datetime | None
