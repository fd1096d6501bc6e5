"""The cohort contract: what the hub asks a trust about a cohort, and the only shapes an answer may take.

Every number in an answer is a :class:`GatedCount`: either a released value or ``suppressed`` with no
value at all (a true zero and 1..k-1 look the same).  The trust's disclosure gate is the only code that
makes them; the hub validates answers against these models and refuses anything else, so a number
cannot reach the hub outside a ``GatedCount``.

Task payloads (sealed for the trust, see :mod:`flip_core.tasks`):

* ``cohort_query`` → :class:`CohortQueryPayload`; result :class:`CohortStatistics`;
* ``persist_cohort`` → :class:`PersistCohortPayload`; result :class:`CohortSnapshotInfo`.

A failed cohort task carries a :class:`~flip_core.tasks.TaskError` whose ``code`` is one of
:class:`CohortErrorCode` — safe categories, never a raw database message.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

DEFAULT_MIN_K = 10
"""The disclosure threshold when nobody asks for more: counts of fewer distinct persons are suppressed."""
MAX_K = 1000
MAX_SQL_CHARS = 10_240
"""Longest cohort query accepted anywhere (hub pre-check and trust validator alike)."""
OTHER_BUCKET = "Other"
PERSON_COLUMN = "person_id"
"""A cohort query must return this column: counts are of distinct persons, never of rows."""

Label = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=63)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CohortErrorCode(StrEnum):
    """Why a trust could not answer, in categories that are safe to show the researcher."""

    INVALID_QUERY = "invalid_query"  # refused by the validator; detail says which rule
    NO_PERSON_COLUMN = "no_person_column"  # the query does not return person_id
    UNKNOWN_TABLE = "unknown_table"  # detail names the identifier
    UNKNOWN_COLUMN = "unknown_column"  # detail names the identifier
    QUERY_FAILED = "query_failed"  # any other database error (no text leaves the trust)
    QUERY_TIMEOUT = "query_timeout"
    BELOW_THRESHOLD = "below_threshold"  # row-level requests and snapshots of too small a cohort
    NOT_APPROVED = "not_approved"  # row-level data of a project this trust holds no frozen cohort for
    SNAPSHOT_TOO_LARGE = "snapshot_too_large"
    DATA_UNAVAILABLE = "data_unavailable"  # the trust's OMOP database or data-access-api is down
    INTERNAL_ERROR = "internal_error"


class GatedCount(_Wire):
    """A count that passed the disclosure gate: a value, or suppressed and no value."""

    value: int | None = Field(None, ge=0)
    suppressed: bool

    @model_validator(mode="after")
    def _value_xor_suppressed(self) -> Self:
        if self.suppressed != (self.value is None):
            raise ValueError("a gated count is either suppressed (no value) or released (a value)")
        return self


class Bucket(_Wire):
    label: Label
    count: GatedCount


class Distribution(_Wire):
    """Distinct persons per bucket; buckets under the threshold are merged into ``Other``."""

    name: Literal["age_band", "sex", "modality"]
    buckets: list[Bucket] = Field(max_length=200)


class ColumnCounts(_Wire):
    """Distinct persons with a value (``non_null``) and without one (``null``) in one result column."""

    column: ColumnName
    non_null: GatedCount
    null: GatedCount


class CohortQueryPayload(_Wire):
    """The ``cohort_query`` task: run this version of the project's query and report gated statistics."""

    query_id: uuid.UUID
    project_id: uuid.UUID
    version: int = Field(ge=1)
    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS)
    min_k: int = Field(DEFAULT_MIN_K, ge=1, le=MAX_K, description="the hub's threshold; the trust's own may be higher")


class CohortStatistics(_Wire):
    """The answer to ``cohort_query``: aggregates only, every number gated."""

    query_id: uuid.UUID
    record_count: GatedCount = Field(description="distinct persons in the cohort")
    k: int = Field(ge=1, le=MAX_K, description="the threshold applied: max(trust's, hub's)")
    columns: list[ColumnCounts] = Field(max_length=200)
    distributions: list[Distribution] = Field(max_length=10)
    computed_at: datetime


class PersistCohortPayload(_Wire):
    """The ``persist_cohort`` task, sent when the trust approved the project: freeze its cohort."""

    project_id: uuid.UUID
    query_id: uuid.UUID
    version: int = Field(ge=1)
    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS)
    min_k: int = Field(DEFAULT_MIN_K, ge=1, le=MAX_K)


class CohortSnapshotInfo(_Wire):
    """The answer to ``persist_cohort``: what was frozen, described by gated counts and a digest."""

    project_id: uuid.UUID
    query_id: uuid.UUID
    persons: GatedCount
    rows: GatedCount
    k: int = Field(ge=1, le=MAX_K, description="the threshold applied: max(trust's, hub's)")
    columns: list[ColumnName] = Field(max_length=200)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    created_at: datetime
