"""Ingesting trusts' answers to cohort tasks: the hub side of the disclosure contract.

The task queue calls these functions (see ``RESULT_HOOKS`` in :mod:`flip_api.services.tasks`) in the
transaction that records a task's outcome:

* ``accept_*`` validate a completed task's result before anything of it is stored.  The answer must be
  the contract's model (:class:`~flip_core.cohort.CohortStatistics` or
  :class:`~flip_core.cohort.CohortSnapshotInfo`), so every number in it is a gated count; it must answer
  the question the task asked; and a released count may not be under the threshold the trust says it
  applied.  Anything else raises, and the queue fails the task with ``invalid_result`` without storing
  the result: the hub never keeps an ungated number.
* ``record_*`` run once the task has ended, however it ended (completed, failed, lease expired,
  cancelled), update ``cohort_results`` / ``cohort_snapshots`` and audit the change as the actor that
  ended the task.

This module knows nothing about the queue itself, so that the queue can list these hooks without an
import cycle.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.db.models import CohortQuery, CohortResult, CohortResultState, CohortSnapshot, TrustTask
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_core.cohort import DEFAULT_MIN_K, CohortSnapshotInfo, CohortStatistics, GatedCount
from flip_core.tasks import TaskStatus

PROJECT_SUBJECT = "project"
QUERY_SUBJECT = "cohort_query"
"""Cohort tasks name the query version they are about as their subject (``subject_id`` = query id)."""


def _now() -> datetime:
    return datetime.now(UTC)


def subject_query_id(task: TrustTask) -> uuid.UUID | None:
    """The query version a cohort task is about, or None for a task enqueued without one."""
    if task.subject_type != QUERY_SUBJECT or task.subject_id is None:
        return None
    try:
        return uuid.UUID(task.subject_id)
    except ValueError:
        return None


def released_counts(stats: CohortStatistics) -> list[GatedCount]:
    """Every gated count in a statistics answer."""
    counts = [stats.record_count]
    for column in stats.columns:
        counts.extend((column.non_null, column.null))
    for distribution in stats.distributions:
        counts.extend(bucket.count for bucket in distribution.buckets)
    return [c for c in counts if not c.suppressed]


async def _result_row(db: AsyncSession, task: TrustTask, *, lock: bool) -> CohortResult | None:
    """The result row still waiting for this task; None when a newer submission superseded it."""
    stmt = select(CohortResult).where(CohortResult.task_id == task.id).execution_options(populate_existing=True)
    if lock:
        stmt = stmt.with_for_update()
    row: CohortResult | None = await db.scalar(stmt)
    return row


# --------------------------------------------------------------------------- cohort_query


async def accept_statistics(db: AsyncSession, task: TrustTask, result: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``cohort_query`` answer; returns what to store, raises if it breaks the contract."""
    stats = CohortStatistics.model_validate(result)
    row = await _result_row(db, task, lock=False)
    expected = row.query_id if row is not None else subject_query_id(task)
    if expected is not None and stats.query_id != expected:
        raise ValueError(f"the answer is for query {stats.query_id}, but the task asked about query {expected}")
    if row is not None and stats.k < row.min_k:
        raise ValueError(f"the trust applied k={stats.k}, below the k={row.min_k} the hub asked for")
    # Defence in depth: the trust's gate releases only counts of at least k persons.
    if any(count.value is not None and count.value < stats.k for count in released_counts(stats)):
        raise ValueError(f"a released count is below the threshold k={stats.k} the trust reported")
    return stats.model_dump(mode="json")


async def record_query_outcome(db: AsyncSession, task: TrustTask, actor: Actor) -> None:
    """Store how a ``cohort_query`` task ended in its result row (unless a newer task superseded it)."""
    row = await _result_row(db, task, lock=True)
    if row is None:
        return
    row.received_at = _now()
    row.record_count = None
    row.suppressed = False
    row.statistics = None
    row.error_code = None
    row.error_detail = None
    if task.status is TaskStatus.COMPLETED:
        stats = CohortStatistics.model_validate(task.result)  # accepted on the way in
        row.statistics = stats.model_dump(mode="json")
        row.suppressed = stats.record_count.suppressed
        row.record_count = stats.record_count.value
        row.state = CohortResultState.SUPPRESSED if row.suppressed else CohortResultState.DONE
    else:
        error = task.error or {}
        row.state = CohortResultState.CANCELLED if task.status is TaskStatus.CANCELLED else CohortResultState.ERROR
        row.error_code = str(error.get("code") or "unspecified")
        row.error_detail = str(error.get("detail") or "")
    await db.flush()
    query = await db.get(CohortQuery, row.query_id)
    assert query is not None  # the row references it
    await audit.record(
        db,
        actor,
        "cohort.result_recorded",
        PROJECT_SUBJECT,
        query.project_id,
        {
            "query_id": str(query.id),
            "version": query.version,
            "trust_id": str(task.trust_id),
            "task_id": str(task.id),
            "state": row.state.value,
            "error_code": row.error_code,
        },
    )


# --------------------------------------------------------------------------- persist_cohort


async def _subject_query(db: AsyncSession, task: TrustTask) -> CohortQuery | None:
    query_id = subject_query_id(task)
    return await db.get(CohortQuery, query_id) if query_id is not None else None


async def accept_snapshot(db: AsyncSession, task: TrustTask, result: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``persist_cohort`` answer; it must describe the project and query version asked for."""
    info = CohortSnapshotInfo.model_validate(result)
    query = await _subject_query(db, task)
    if query is not None and (info.query_id != query.id or info.project_id != query.project_id):
        raise ValueError(
            f"the snapshot is of project {info.project_id} query {info.query_id}, "
            f"but the task asked for project {query.project_id} query {query.id}"
        )
    if info.k < DEFAULT_MIN_K:
        raise ValueError(f"the trust applied k={info.k}, below the floor k={DEFAULT_MIN_K}")
    if any(count.value is not None and count.value < info.k for count in (info.persons, info.rows)):
        raise ValueError(f"a released count is below the threshold k={info.k} the trust reported")
    return info.model_dump(mode="json")


async def record_snapshot_outcome(db: AsyncSession, task: TrustTask, actor: Actor) -> None:
    """Record (or replace) the trust's snapshot when ``persist_cohort`` completed; audit a failure."""
    query = await _subject_query(db, task)
    if query is None or task.status is TaskStatus.CANCELLED:
        return
    details: dict[str, Any] = {"trust_id": str(task.trust_id), "query_id": str(query.id), "version": query.version}
    if task.status is not TaskStatus.COMPLETED:
        details["error_code"] = (task.error or {}).get("code")
        await audit.record(db, actor, "cohort.snapshot_failed", PROJECT_SUBJECT, query.project_id, details)
        return
    info = CohortSnapshotInfo.model_validate(task.result)  # accepted on the way in
    values = {
        "query_id": query.id,
        "task_id": task.id,
        "persons": info.persons.value,
        "rows": info.rows.value,
        "sha256": info.sha256,
        "created_at": info.created_at,
        "recorded_at": _now(),
    }
    # One snapshot per project and trust: a repeated freeze (a re-run task) replaces the record.
    await db.execute(
        insert(CohortSnapshot)
        .values(id=uuid.uuid4(), project_id=query.project_id, trust_id=task.trust_id, **values)
        .on_conflict_do_update(constraint="uq_cohort_snapshots_project_id", set_=values)
    )
    details.update({"task_id": str(task.id), "sha256": info.sha256})
    await audit.record(db, actor, "cohort.snapshot_recorded", PROJECT_SUBJECT, query.project_id, details)
