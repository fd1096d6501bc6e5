"""Imaging imports from the hub's side: asking approving trusts to import a project's studies, to retry
or delete them, and keeping each import's status fresh.

* At approval (:func:`request_import`, called by ``projects.on_trust_approved``) an imaging project's
  trust gets ``create_imaging``, which waits for that trust's ``persist_cohort``: the accession ids come
  from the frozen cohort.
* Editors may ask approved trusts to re-import failed studies (:func:`request_reimport`) or to delete the
  project's images (:func:`request_deletion`); deleting the project does the latter at every approved
  trust (:func:`delete_for_deleted_project`).
* The worker calls :func:`refresh_statuses` each tick: an import that is not complete gets one
  ``get_imaging_status`` at a time, at most every ``FLIP_IMAGING_REFRESH_S`` seconds.

Answers are ingested by :mod:`flip_api.services.imaging_results`; the read side is
:mod:`flip_api.services.imaging_views`.  Every imaging task names its project as its subject.

Lock order (as in :mod:`flip_api.services.cohorts`): the project row and any task being cancelled are
locked before the transaction's first audit entry; import rows are written only after it, because a
result post holds the audit lock when it updates them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from flip_api.core.errors import Conflict
from flip_api.core.state import HubState
from flip_api.db.models import (
    ImagingImport,
    Project,
    ProjectStatus,
    ProjectTrust,
    Trust,
    TrustDecision,
    TrustTask,
)
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.cohort_results import subject_query_id
from flip_api.services.imaging_results import IMAGING_SUBJECT, IMAGING_TASK_TYPES, PROJECT_SUBJECT, lock_import_row
from flip_api.services.project_access import project_for_change
from flip_api.services.rbac import Principal
from flip_api.services.tasks import cancel_task, enqueue_task
from flip_core.imaging import CreateImagingPayload, ImagingProjectPayload
from flip_core.tasks import TaskStatus, TaskType

log = logging.getLogger(__name__)

REFRESH_BATCH = 200
"""At most this many status requests per worker tick; the rest wait for the next one."""

WAITING_STATUSES = (TaskStatus.PENDING, TaskStatus.LEASED)


def _now() -> datetime:
    return datetime.now(UTC)


def imaging_subject(project_id: uuid.UUID) -> tuple[str, str]:
    """The subject every imaging task of a project carries."""
    return IMAGING_SUBJECT, str(project_id)


@dataclass(frozen=True)
class QueuedImagingTask:
    """An imaging task just queued for one trust."""

    trust: Trust
    task: TrustTask


def project_without_imaging() -> Conflict:
    return Conflict("this project does not use imaging (has_imaging is false)", code="project_without_imaging")


async def approved_trusts(db: AsyncSession, project_id: uuid.UUID) -> list[Trust]:
    """The trusts that approved the project, by name."""
    rows = await db.scalars(
        select(Trust)
        .join(ProjectTrust, ProjectTrust.trust_id == Trust.id)
        .where(ProjectTrust.project_id == project_id, ProjectTrust.decision == TrustDecision.APPROVED)
        .order_by(Trust.name, Trust.code)
    )
    return list(rows.all())


# --------------------------------------------------------------------------- at approval


async def request_import(
    db: AsyncSession,
    hub: HubState,
    project: Project,
    trust: Trust,
    snapshot_task: TrustTask | None,
    *,
    actor: Actor,
) -> TrustTask | None:
    """Ask an approving trust to import the project's studies once its cohort is frozen.

    ``snapshot_task`` is the trust's ``persist_cohort`` task just enqueued; ``create_imaging`` depends on
    it, so it is handed out only after the freeze completed and is cancelled if the freeze fails.  Without
    one (a project with no query of record) nothing is queued and the skip is audited.
    """
    query_id = subject_query_id(snapshot_task) if snapshot_task is not None else None
    if snapshot_task is None or query_id is None:
        await audit.record(
            db,
            actor,
            "imaging.import_skipped",
            PROJECT_SUBJECT,
            project.id,
            {"trust_id": str(trust.id), "reason": "no_cohort_snapshot"},
        )
        return None
    min_k = hub.settings.cohort_min_k
    payload = CreateImagingPayload(
        project_id=project.id, query_id=query_id, dicom_to_nifti=project.dicom_to_nifti, min_k=min_k
    )
    task = await enqueue_task(
        db,
        hub,
        trust,
        TaskType.CREATE_IMAGING,
        payload.model_dump(mode="json"),
        actor=actor,
        depends_on=snapshot_task.id,
        subject=imaging_subject(project.id),
    )
    row = await lock_import_row(db, project.id, trust.id, min_k=min_k)
    row.import_task_id = task.id
    row.min_k = min_k
    await db.flush()
    await audit.record(
        db,
        actor,
        "imaging.import_requested",
        PROJECT_SUBJECT,
        project.id,
        {
            "trust_id": str(trust.id),
            "task_id": str(task.id),
            "depends_on": str(snapshot_task.id),
            "query_id": str(query_id),
            "dicom_to_nifti": project.dicom_to_nifti,
            "min_k": min_k,
        },
    )
    return task


# --------------------------------------------------------------------------- re-import and delete


async def _enqueue_each(
    db: AsyncSession,
    hub: HubState,
    project: Project,
    trusts: Sequence[Trust],
    task_type: TaskType,
    *,
    actor: Actor,
    action: str,
    reason: str | None = None,
    cancelled: Sequence[TrustTask] | None = None,
) -> list[QueuedImagingTask]:
    """One ``task_type`` per trust (with the hub's threshold), the import rows told, one audit entry each."""
    min_k = hub.settings.cohort_min_k
    payload = ImagingProjectPayload(project_id=project.id, min_k=min_k).model_dump(mode="json")
    queued = [
        QueuedImagingTask(
            trust,
            await enqueue_task(db, hub, trust, task_type, payload, actor=actor, subject=imaging_subject(project.id)),
        )
        for trust in trusts
    ]
    for item in queued:
        row = await lock_import_row(db, project.id, item.trust.id, min_k=min_k)
        row.min_k = min_k
        details: dict[str, Any] = {"trust_id": str(item.trust.id), "task_id": str(item.task.id), "min_k": min_k}
        if reason is not None:
            details["reason"] = reason
        if cancelled is not None:
            details["cancelled_tasks"] = [str(t.id) for t in cancelled if t.trust_id == item.trust.id]
        await audit.record(db, actor, action, PROJECT_SUBJECT, project.id, details)
    await db.flush()
    return queued


async def _targets(
    db: AsyncSession, principal: Principal, project_id: uuid.UUID, trust_ids: Sequence[uuid.UUID] | None
) -> tuple[Project, list[Trust]]:
    """The project (locked; editors only) and the approved trusts asked for (default: all of them)."""
    project = await project_for_change(db, principal, project_id)
    if not project.has_imaging:
        raise project_without_imaging()
    if project.status is not ProjectStatus.APPROVED:
        raise Conflict(
            f"project is {project.status.value}: imaging starts when a trust approves it", code="project_not_approved"
        )
    approved = await approved_trusts(db, project.id)
    if trust_ids is None:
        return project, approved
    by_id = {t.id: t for t in approved}
    wanted = list(dict.fromkeys(trust_ids))
    refused = [str(tid) for tid in wanted if tid not in by_id]
    if refused:
        raise Conflict(f"the project is not approved at trust {', '.join(refused)}", code="trust_not_approved")
    return project, [by_id[tid] for tid in wanted]


async def request_reimport(
    db: AsyncSession,
    hub: HubState,
    principal: Principal,
    project_id: uuid.UUID,
    trust_ids: Sequence[uuid.UUID] | None = None,
) -> list[QueuedImagingTask]:
    """Ask approved trusts (default: all) to retry the project's FAILED studies (editors only)."""
    project, trusts = await _targets(db, principal, project_id, trust_ids)
    return await _enqueue_each(
        db,
        hub,
        project,
        trusts,
        TaskType.REIMPORT_STUDIES,
        actor=Actor.user(principal.id),
        action="imaging.reimport_requested",
    )


async def lock_waiting_tasks(
    db: AsyncSession, project_id: uuid.UUID, trust_ids: Sequence[uuid.UUID] | None = None
) -> list[TrustTask]:
    """The project's imaging tasks not handed out yet, locked: call before the transaction's first audit entry.

    Tasks a trust holds (LEASED) are left alone: the trust finishes or abandons them itself.
    """
    stmt = (
        select(TrustTask)
        .where(
            TrustTask.subject_type == IMAGING_SUBJECT,
            TrustTask.subject_id == str(project_id),
            TrustTask.status == TaskStatus.PENDING,
        )
        .order_by(TrustTask.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if trust_ids is not None:
        stmt = stmt.where(TrustTask.trust_id.in_(list(trust_ids)))
    return list((await db.scalars(stmt)).all())


async def _withdraw_and_delete(
    db: AsyncSession,
    hub: HubState,
    project: Project,
    trusts: Sequence[Trust],
    waiting: Sequence[TrustTask],
    *,
    actor: Actor,
    reason: str,
) -> list[QueuedImagingTask]:
    """Cancel imaging work not yet started (already locked) and queue ``delete_imaging`` at each trust."""
    cancelled = [task for task in waiting if await cancel_task(db, task, reason, actor)]
    return await _enqueue_each(
        db,
        hub,
        project,
        trusts,
        TaskType.DELETE_IMAGING,
        actor=actor,
        action="imaging.delete_requested",
        reason=reason,
        cancelled=cancelled,
    )


async def request_deletion(
    db: AsyncSession,
    hub: HubState,
    principal: Principal,
    project_id: uuid.UUID,
    trust_ids: Sequence[uuid.UUID] | None = None,
) -> list[QueuedImagingTask]:
    """Ask approved trusts (default: all) to delete the project's images (editors only).

    Imaging tasks of the project still waiting at those trusts (an import not started yet, a status
    request) are cancelled first, so nothing re-imports behind the deletion.
    """
    project, trusts = await _targets(db, principal, project_id, trust_ids)
    waiting = await lock_waiting_tasks(db, project.id, [t.id for t in trusts])
    return await _withdraw_and_delete(
        db,
        hub,
        project,
        trusts,
        waiting,
        actor=Actor.user(principal.id),
        reason="the project's images were deleted",
    )


async def delete_for_deleted_project(
    db: AsyncSession, hub: HubState, project: Project, waiting: Sequence[TrustTask], *, actor: Actor
) -> list[QueuedImagingTask]:
    """On a project's deletion: every approved trust deletes its images; waiting imaging work is cancelled.

    ``waiting`` comes from :func:`lock_waiting_tasks`, called before the deletion's first audit entry.
    """
    if not project.has_imaging:
        return []
    trusts = await approved_trusts(db, project.id)
    if not trusts and not waiting:
        return []
    return await _withdraw_and_delete(db, hub, project, trusts, waiting, actor=actor, reason="the project was deleted")


# --------------------------------------------------------------------------- status refresh

_CREATE = aliased(TrustTask, name="create_task")
_WAITING = aliased(TrustTask, name="waiting_task")


async def refresh_statuses(db: AsyncSession, hub: HubState, *, now: datetime | None = None) -> int:
    """Queue ``get_imaging_status`` for every import that needs a fresh status; returns how many.

    An import qualifies when its project uses imaging and is not deleted, its trust approved, its latest
    status is not complete (or it has none yet and its ``create_imaging`` completed), no imaging task of
    the project is waiting at that trust, and neither a request nor an answer came in the last
    ``FLIP_IMAGING_REFRESH_S`` seconds.  One query finds them all.
    """
    now = now or _now()
    cutoff = now - timedelta(seconds=hub.settings.imaging_refresh_s)
    complete = ImagingImport.status["complete"].as_boolean()
    deleted = ImagingImport.status["deleted"].as_boolean()
    waiting = exists().where(
        _WAITING.subject_type == IMAGING_SUBJECT,
        _WAITING.subject_id == cast(ImagingImport.project_id, String),
        _WAITING.trust_id == ImagingImport.trust_id,
        _WAITING.type.in_([t.value for t in IMAGING_TASK_TYPES]),
        _WAITING.status.in_(WAITING_STATUSES),
    )
    rows = (
        await db.execute(
            select(ImagingImport, Trust)
            .join(Project, Project.id == ImagingImport.project_id)
            .join(
                ProjectTrust,
                and_(
                    ProjectTrust.project_id == ImagingImport.project_id,
                    ProjectTrust.trust_id == ImagingImport.trust_id,
                ),
            )
            .join(Trust, Trust.id == ImagingImport.trust_id)
            .outerjoin(_CREATE, _CREATE.id == ImagingImport.import_task_id)
            .where(
                Project.has_imaging.is_(True),
                Project.deleted_at.is_(None),
                ProjectTrust.decision == TrustDecision.APPROVED,
                or_(
                    and_(ImagingImport.status.is_not(None), complete.is_not(True), deleted.is_not(True)),
                    and_(ImagingImport.status.is_(None), _CREATE.status == TaskStatus.COMPLETED),
                ),
                or_(ImagingImport.refresh_requested_at.is_(None), ImagingImport.refresh_requested_at < cutoff),
                or_(ImagingImport.received_at.is_(None), ImagingImport.received_at < cutoff),
                ~waiting,
            )
            .order_by(ImagingImport.refresh_requested_at.asc().nulls_first(), ImagingImport.id)
            .limit(REFRESH_BATCH)
        )
    ).all()
    min_k = hub.settings.cohort_min_k
    actor = Actor.system("imaging-refresh")
    for row, trust in rows:
        payload = ImagingProjectPayload(project_id=row.project_id, min_k=min_k).model_dump(mode="json")
        await enqueue_task(
            db, hub, trust, TaskType.GET_IMAGING_STATUS, payload, actor=actor, subject=imaging_subject(row.project_id)
        )
    # Written after the enqueues' audit entries (see the lock order above); a result post that changed a
    # row meanwhile keeps its status: only these two columns are updated.
    for row, _ in rows:
        row.refresh_requested_at = now
        row.min_k = min_k
    await db.flush()
    return len(rows)
