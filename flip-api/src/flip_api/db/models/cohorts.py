"""Cohort queries (versioned per project), their per-trust results, and the snapshots frozen at approval.

Only aggregates live here: every count was a :class:`~flip_core.cohort.GatedCount` when it arrived, and a
suppressed count is stored as NULL with ``suppressed = true``, never as a number.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, DateTime, Enum, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from flip_api.db.models.base import Base, Timestamps, UuidPk


class CohortResultState(StrEnum):
    """Where one trust's answer to one query version stands.

    ``PENDING`` covers both queued and running: which of the two is read from the task itself, so that
    leasing never has to touch this table.
    """

    PENDING = "PENDING"
    DONE = "DONE"
    SUPPRESSED = "SUPPRESSED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"


class CohortQuery(UuidPk, Base):
    """One saved version of a project's cohort query; the highest version is the query of record."""

    __tablename__ = "cohort_queries"
    __table_args__ = (UniqueConstraint("project_id", "version"),)

    # UNIQUE(project_id, version) also serves "the latest version of a project".
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    sql: Mapped[str] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CohortResult(UuidPk, Timestamps, Base):
    """One trust's answer to one query version (the latest task sent for that pair decides it)."""

    __tablename__ = "cohort_results"
    __table_args__ = (UniqueConstraint("query_id", "trust_id"),)

    query_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cohort_queries.id", ondelete="CASCADE"))
    trust_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trusts.id", ondelete="CASCADE"), index=True)
    # The task whose outcome this row waits for; a result of any other task is ignored (superseded).
    task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("trust_tasks.id", ondelete="SET NULL"), index=True)
    state: Mapped[CohortResultState] = mapped_column(
        Enum(CohortResultState, name="cohort_result_state"), default=CohortResultState.PENDING
    )
    # The threshold the hub asked for; the trust must report a k at least this high.
    min_k: Mapped[int] = mapped_column(Integer)
    record_count: Mapped[int | None] = mapped_column(Integer)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The validated CohortStatistics (every number in it a gated count).
    statistics: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CohortSnapshot(UuidPk, Base):
    """What a trust froze when it approved the project: gated counts and a digest, never rows."""

    __tablename__ = "cohort_snapshots"
    __table_args__ = (UniqueConstraint("project_id", "trust_id"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    trust_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trusts.id", ondelete="CASCADE"), index=True)
    query_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cohort_queries.id", ondelete="CASCADE"))
    task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("trust_tasks.id", ondelete="SET NULL"))
    # NULL when the trust's gate suppressed the count.
    persons: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    # When the trust froze it (the trust's clock) and when the hub recorded it.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
