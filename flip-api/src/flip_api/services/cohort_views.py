"""Read models of cohorts: a project's query versions, per-trust results with totals, and snapshots.

Every count shown here is a :class:`~flip_core.cohort.GatedCount`; a suppressed count is shown as
``suppressed: true`` and never contributes a number to a total.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import NotFound
from flip_api.db.models import (
    CohortQuery,
    CohortResult,
    CohortResultState,
    CohortSnapshot,
    ProjectTrust,
    Trust,
    TrustDecision,
    TrustTask,
)
from flip_api.services.cohort_results import QUERY_SUBJECT
from flip_api.services.project_access import get_project
from flip_api.services.rbac import Principal
from flip_core.cohort import CohortStatistics, GatedCount
from flip_core.tasks import TaskStatus, TaskType


class CohortState(StrEnum):
    """A trust's answer as people see it: where the work is, or what came of it."""

    QUEUED = "queued"  # the task waits for the trust to lease it
    RUNNING = "running"  # the trust holds the task
    DONE = "done"  # a released count
    SUPPRESSED = "suppressed"  # the count is under the disclosure threshold (no number)
    ERROR = "error"  # the trust could not answer, or its answer broke the contract
    CANCELLED = "cancelled"  # superseded by a later submission, or the trust was not chosen


USABLE_STATES = frozenset({CohortState.DONE})
"""A count that can carry a project to staging: released, not suppressed, no error."""


def cohort_state(row_state: CohortResultState, task_status: TaskStatus | None) -> CohortState:
    """The visible state of a result row; a pending row is queued or running depending on its task."""
    if row_state is CohortResultState.PENDING:
        return CohortState.RUNNING if task_status is TaskStatus.LEASED else CohortState.QUEUED
    return CohortState(row_state.value.lower())


def _gated(row_state: CohortResultState, value: int | None) -> GatedCount | None:
    if row_state is CohortResultState.DONE:
        return GatedCount(value=value, suppressed=False)
    if row_state is CohortResultState.SUPPRESSED:
        return GatedCount(value=None, suppressed=True)
    return None


def query_not_found(detail: str = "this project has no saved cohort query") -> NotFound:
    return NotFound(detail, code="cohort_query_not_found")


# --------------------------------------------------------------------------- versions


async def latest_query(db: AsyncSession, project_id: uuid.UUID) -> CohortQuery | None:
    """The project's query of record (its highest version), or None before the first save."""
    query: CohortQuery | None = await db.scalar(
        select(CohortQuery).where(CohortQuery.project_id == project_id).order_by(CohortQuery.version.desc()).limit(1)
    )
    return query


@dataclass(frozen=True)
class QueryHistory:
    latest: CohortQuery | None
    versions: list[CohortQuery]  # newest first


async def query_history(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> QueryHistory:
    """The query of record and every saved version (readers of the project)."""
    project = await get_project(db, principal, project_id)
    versions = list(
        (
            await db.scalars(
                select(CohortQuery).where(CohortQuery.project_id == project.id).order_by(CohortQuery.version.desc())
            )
        ).all()
    )
    return QueryHistory(versions[0] if versions else None, versions)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrustResultView:
    trust_id: uuid.UUID
    trust_name: str
    trust_code: str
    state: CohortState
    record_count: GatedCount | None
    statistics: CohortStatistics | None
    error_code: str | None
    error_detail: str | None
    task_id: uuid.UUID | None
    attempt: int | None
    received_at: datetime | None


@dataclass(frozen=True)
class ResultTotals:
    record_count: int  # the sum of released counts only
    trusts: int
    by_state: dict[CohortState, int]


@dataclass(frozen=True)
class ResultsView:
    query: CohortQuery
    is_latest: bool
    trusts: list[TrustResultView]
    totals: ResultTotals


def _totals(trusts: list[TrustResultView]) -> ResultTotals:
    """Trusts per state and the sum of released counts (a suppressed count has no value to add)."""
    by_state = dict.fromkeys(CohortState, 0)
    for t in trusts:
        by_state[t.state] += 1
    released = sum(t.record_count.value for t in trusts if t.record_count is not None and t.record_count.value)
    return ResultTotals(released, len(trusts), by_state)


async def _query_version(db: AsyncSession, project_id: uuid.UUID, version: int | None) -> tuple[CohortQuery, bool]:
    versions = (
        await db.scalars(
            select(CohortQuery).where(CohortQuery.project_id == project_id).order_by(CohortQuery.version.desc())
        )
    ).all()
    if not versions:
        raise query_not_found()
    if version is None:
        return versions[0], True
    for query in versions:
        if query.version == version:
            return query, query is versions[0]
    raise query_not_found(f"this project has no version {version} of its cohort query")


async def results(
    db: AsyncSession, principal: Principal, project_id: uuid.UUID, version: int | None = None
) -> ResultsView:
    """Each trust's answer to one version (default: the latest), with totals (readers of the project)."""
    project = await get_project(db, principal, project_id)
    query, is_latest = await _query_version(db, project.id, version)
    rows = await db.execute(
        select(CohortResult, Trust.name, Trust.code, TrustTask.status, TrustTask.attempt)
        .join(Trust, Trust.id == CohortResult.trust_id)
        .outerjoin(TrustTask, TrustTask.id == CohortResult.task_id)
        .where(CohortResult.query_id == query.id)
        .order_by(Trust.name, Trust.code)
        .execution_options(populate_existing=True)
    )
    trusts = [
        TrustResultView(
            trust_id=row.trust_id,
            trust_name=name,
            trust_code=code,
            state=cohort_state(row.state, task_status),
            record_count=_gated(row.state, row.record_count),
            statistics=CohortStatistics.model_validate(row.statistics) if row.statistics is not None else None,
            error_code=row.error_code,
            error_detail=row.error_detail,
            task_id=row.task_id,
            attempt=attempt,
            received_at=row.received_at,
        )
        for row, name, code, task_status, attempt in rows
    ]
    return ResultsView(query, is_latest, trusts, _totals(trusts))


async def latest_states(
    db: AsyncSession, project_id: uuid.UUID
) -> tuple[CohortQuery | None, dict[uuid.UUID, tuple[CohortState, str | None]]]:
    """For staging: the query of record and, per trust that was asked, its state and error code."""
    query = await latest_query(db, project_id)
    if query is None:
        return None, {}
    rows = await db.execute(
        select(CohortResult.trust_id, CohortResult.state, CohortResult.error_code, TrustTask.status)
        .outerjoin(TrustTask, TrustTask.id == CohortResult.task_id)
        .where(CohortResult.query_id == query.id)
    )
    return query, {tid: (cohort_state(state, status), code) for tid, state, code, status in rows}


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class SnapshotView:
    """An approved trust's frozen cohort, or where its ``persist_cohort`` task stands."""

    trust_id: uuid.UUID
    trust_name: str
    trust_code: str
    state: CohortState | None  # of the latest persist_cohort task; None if none was sent
    task_id: uuid.UUID | None
    error_code: str | None
    query_id: uuid.UUID | None
    version: int | None
    persons: GatedCount | None
    rows: GatedCount | None
    sha256: str | None
    created_at: datetime | None
    recorded_at: datetime | None


def _task_state(task: TrustTask) -> CohortState:
    return {
        TaskStatus.PENDING: CohortState.QUEUED,
        TaskStatus.LEASED: CohortState.RUNNING,
        TaskStatus.COMPLETED: CohortState.DONE,
        TaskStatus.FAILED: CohortState.ERROR,
        TaskStatus.CANCELLED: CohortState.CANCELLED,
    }[task.status]


def _count(value: int | None) -> GatedCount:
    return GatedCount(value=value, suppressed=value is None)


async def snapshots(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> list[SnapshotView]:
    """One entry per trust that approved the project (readers of the project)."""
    project = await get_project(db, principal, project_id)
    approved = (
        await db.execute(
            select(Trust)
            .join(ProjectTrust, ProjectTrust.trust_id == Trust.id)
            .where(ProjectTrust.project_id == project.id, ProjectTrust.decision == TrustDecision.APPROVED)
            .order_by(Trust.name, Trust.code)
        )
    ).scalars()
    trusts = list(approved.all())
    if not trusts:
        return []
    versions = {
        str(q.id): q for q in (await db.scalars(select(CohortQuery).where(CohortQuery.project_id == project.id))).all()
    }
    frozen = {
        s.trust_id: s
        for s in (
            await db.scalars(
                select(CohortSnapshot)
                .where(CohortSnapshot.project_id == project.id)
                .execution_options(populate_existing=True)
            )
        ).all()
    }
    latest_task: dict[uuid.UUID, TrustTask] = {}
    if versions:
        tasks = await db.scalars(
            select(TrustTask)
            .where(
                TrustTask.type == TaskType.PERSIST_COHORT.value,
                TrustTask.subject_type == QUERY_SUBJECT,
                TrustTask.subject_id.in_(list(versions)),
                TrustTask.trust_id.in_([t.id for t in trusts]),
            )
            .order_by(TrustTask.created_at.desc())
            .execution_options(populate_existing=True)
        )
        for found in tasks.all():
            latest_task.setdefault(found.trust_id, found)  # newest first: keep the first seen
    return [_snapshot_view(t, frozen.get(t.id), latest_task.get(t.id), versions) for t in trusts]


def _snapshot_view(
    trust: Trust, snap: CohortSnapshot | None, task: TrustTask | None, versions: dict[str, CohortQuery]
) -> SnapshotView:
    query_id = str(snap.query_id) if snap else (task.subject_id if task else None)
    query = versions.get(query_id) if query_id else None
    failed = task is not None and task.status is TaskStatus.FAILED
    return SnapshotView(
        trust_id=trust.id,
        trust_name=trust.name,
        trust_code=trust.code,
        state=_task_state(task) if task else None,
        task_id=task.id if task else None,
        error_code=(task.error or {}).get("code") if task and failed else None,
        query_id=query.id if query else None,
        version=query.version if query else None,
        persons=_count(snap.persons) if snap else None,
        rows=_count(snap.rows) if snap else None,
        sha256=snap.sha256 if snap else None,
        created_at=snap.created_at if snap else None,
        recorded_at=snap.recorded_at if snap else None,
    )
