"""Read model of a project's imaging: per approving trust, the latest status, its freshness and the work
still waiting there.

Counts are shown exactly as the trust's disclosure gate released them (:class:`~flip_core.cohort.GatedCount`).
A status is *stale* (shown as "last known") when its trust is offline, or when an import that is still
running has not been heard of for ``STALE_AFTER_REFRESHES`` refresh intervals.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.db.models import ImagingImport, ProjectTrust, Trust, TrustDecision, TrustTask
from flip_api.services.imaging import WAITING_STATUSES, imaging_subject, project_without_imaging
from flip_api.services.project_access import get_project
from flip_api.services.rbac import Principal
from flip_api.services.trusts import TrustStatus, trust_status
from flip_core.imaging import ImagingStatus
from flip_core.tasks import TaskStatus, TaskType

STALE_AFTER_REFRESHES = 5
"""A running import's status not heard again for this many refresh intervals is stale."""

_UNREACHABLE = frozenset({TrustStatus.OFFLINE, TrustStatus.NEVER_SEEN})


class Staleness(StrEnum):
    """Why a status is only the last known one."""

    TRUST_OFFLINE = "trust_offline"
    STATUS_OUTDATED = "status_outdated"


class TaskState(StrEnum):
    QUEUED = "queued"  # waiting for the trust (or for the task it depends on)
    RUNNING = "running"  # the trust holds it


@dataclass(frozen=True)
class WaitingTask:
    id: uuid.UUID
    type: TaskType
    state: TaskState
    created_at: datetime


@dataclass(frozen=True)
class ImagingError:
    """The last imaging task at a trust that ended without an answer."""

    code: str
    detail: str
    task_type: str | None
    at: datetime | None


@dataclass(frozen=True)
class TrustImagingView:
    trust_id: uuid.UUID
    trust_code: str
    trust_name: str
    trust_status: TrustStatus
    requested: bool  # whether the hub ever asked this trust to import (approvals before imaging: no)
    status: ImagingStatus | None
    reported_at: datetime | None
    received_at: datetime | None
    task_id: uuid.UUID | None
    last_error: ImagingError | None
    pending: bool
    pending_tasks: list[WaitingTask]
    stale: bool
    stale_reason: Staleness | None


@dataclass(frozen=True)
class ImagingView:
    project_id: uuid.UUID
    dicom_to_nifti: bool
    refresh_s: float
    trusts: list[TrustImagingView]


def staleness(
    trust_state: TrustStatus,
    status: ImagingStatus | None,
    received_at: datetime | None,
    *,
    refresh_s: float,
    now: datetime,
) -> Staleness | None:
    """Why a trust's imaging status is only the last known one, or None when it is current."""
    if trust_state in _UNREACHABLE:
        return Staleness.TRUST_OFFLINE
    if status is None or status.complete or status.deleted or received_at is None:
        return None  # nothing to show, or a final status that is not refreshed any more
    if now - received_at > timedelta(seconds=STALE_AFTER_REFRESHES * refresh_s):
        return Staleness.STATUS_OUTDATED
    return None


def _error(row: ImagingImport | None) -> ImagingError | None:
    if row is None or row.error_code is None:
        return None
    return ImagingError(row.error_code, row.error_detail or "", row.error_task_type, row.error_at)


async def imaging_view(
    db: AsyncSession,
    principal: Principal,
    project_id: uuid.UUID,
    *,
    refresh_s: float,
    now: datetime | None = None,
) -> ImagingView:
    """Each approving trust's imaging status (readers of the project; 409 if it does not use imaging)."""
    project = await get_project(db, principal, project_id)
    if not project.has_imaging:
        raise project_without_imaging()
    now = now or datetime.now(UTC)
    rows = (
        await db.execute(
            select(Trust, ImagingImport)
            .join(ProjectTrust, ProjectTrust.trust_id == Trust.id)
            .outerjoin(
                ImagingImport,
                and_(ImagingImport.project_id == ProjectTrust.project_id, ImagingImport.trust_id == Trust.id),
            )
            .where(ProjectTrust.project_id == project.id, ProjectTrust.decision == TrustDecision.APPROVED)
            .order_by(Trust.name, Trust.code)
            .execution_options(populate_existing=True)
        )
    ).all()
    subject_type, subject_id = imaging_subject(project.id)
    waiting: dict[uuid.UUID, list[WaitingTask]] = {}
    tasks = await db.execute(
        select(TrustTask.id, TrustTask.trust_id, TrustTask.type, TrustTask.status, TrustTask.created_at)
        .where(
            TrustTask.subject_type == subject_type,
            TrustTask.subject_id == subject_id,
            TrustTask.status.in_(WAITING_STATUSES),
        )
        .order_by(TrustTask.created_at, TrustTask.id)
    )
    for task_id, trust_id, task_type, task_status, created_at in tasks:
        state = TaskState.RUNNING if task_status is TaskStatus.LEASED else TaskState.QUEUED
        waiting.setdefault(trust_id, []).append(WaitingTask(task_id, TaskType(task_type), state, created_at))
    trusts = []
    for trust, row in rows:
        status = ImagingStatus.model_validate(row.status) if row is not None and row.status is not None else None
        received_at = row.received_at if row is not None else None
        health = trust_status(trust, now)
        reason = staleness(health, status, received_at, refresh_s=refresh_s, now=now)
        pending = waiting.get(trust.id, [])
        trusts.append(
            TrustImagingView(
                trust_id=trust.id,
                trust_code=trust.code,
                trust_name=trust.name,
                trust_status=health,
                requested=row is not None,
                status=status,
                reported_at=row.reported_at if row is not None else None,
                received_at=received_at,
                task_id=row.task_id if row is not None else None,
                last_error=_error(row),
                pending=bool(pending),
                pending_tasks=pending,
                stale=reason is not None,
                stale_reason=reason,
            )
        )
    return ImagingView(project.id, project.dicom_to_nifti, refresh_s, trusts)
