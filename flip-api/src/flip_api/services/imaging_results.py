"""Ingesting trusts' answers to imaging tasks: the hub side of the imaging contract.

Every imaging task (``create_imaging``, ``get_imaging_status``, ``reimport_studies``, ``delete_imaging``)
answers with :class:`~flip_core.imaging.ImagingStatus`.  The task queue calls these functions (see
``RESULT_HOOKS`` in :mod:`flip_api.services.tasks`) in the transaction that records a task's outcome:

* :func:`accept_status` validates a completed result before anything of it is stored: it must be the
  contract's model (so every count is a gated count and no other field exists), be about the project the
  task asked about, report a ``k`` at least the one the hub asked for, and release no count under that
  ``k``.  Anything else fails the task with ``invalid_result`` and stores nothing.
* :func:`record_outcome` runs once the task ended, however it ended, and updates the project's
  :class:`~flip_api.db.models.ImagingImport` row at that trust.  Answers can arrive out of order (a slow
  status request behind a fast re-import), so a status replaces the stored one only when its own
  ``updated_at`` is newer.

Like :mod:`flip_api.services.cohort_results`, this module knows nothing about the queue itself, so that
the queue can list these hooks without an import cycle.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.db.models import ImagingImport, TrustTask
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_core.cohort import DEFAULT_MIN_K, GatedCount
from flip_core.imaging import ImagingStatus
from flip_core.tasks import TaskStatus, TaskType

PROJECT_SUBJECT = "project"
IMAGING_SUBJECT = "imaging"
"""Every imaging task names its project as its subject (``subject_id`` = project id), so that the work
still waiting for one project at one trust is a single indexed lookup."""

IMAGING_TASK_TYPES: frozenset[TaskType] = frozenset(
    {TaskType.CREATE_IMAGING, TaskType.GET_IMAGING_STATUS, TaskType.REIMPORT_STUDIES, TaskType.DELETE_IMAGING}
)

# A trust's clock may run a little ahead of the hub's; further ahead, a status would never be replaced.
MAX_CLOCK_SKEW = timedelta(minutes=5)
_DELIBERATE_CANCEL = "cancelled"


def _now() -> datetime:
    return datetime.now(UTC)


def subject_project_id(task: TrustTask) -> uuid.UUID | None:
    """The project an imaging task is about, or None for a task enqueued without one."""
    if task.subject_type != IMAGING_SUBJECT or task.subject_id is None:
        return None
    try:
        return uuid.UUID(task.subject_id)
    except ValueError:
        return None


def released_counts(status: ImagingStatus) -> list[GatedCount]:
    """Every released (not suppressed) count in a status."""
    counts = [status.studies, *status.by_state.values(), *(f.count for f in status.failures)]
    return [c for c in counts if not c.suppressed]


async def _import_row(db: AsyncSession, project_id: uuid.UUID, trust_id: uuid.UUID) -> ImagingImport | None:
    row: ImagingImport | None = await db.scalar(
        select(ImagingImport).where(ImagingImport.project_id == project_id, ImagingImport.trust_id == trust_id)
    )
    return row


async def lock_import_row(
    db: AsyncSession, project_id: uuid.UUID, trust_id: uuid.UUID, *, min_k: int = DEFAULT_MIN_K
) -> ImagingImport:
    """The project's import row at a trust, created if missing, locked for the rest of the transaction.

    Callers that also write audit entries must call this only after their first one (the audit append
    takes a transaction-wide lock that result posts take before this row's lock).
    """
    await db.execute(
        insert(ImagingImport)
        .values(id=uuid.uuid4(), project_id=project_id, trust_id=trust_id, min_k=min_k)
        .on_conflict_do_nothing(constraint="uq_imaging_imports_project_id")
    )
    row = await db.scalar(
        select(ImagingImport)
        .where(ImagingImport.project_id == project_id, ImagingImport.trust_id == trust_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert row is not None  # inserted above if it was missing
    return row


async def accept_status(db: AsyncSession, task: TrustTask, result: dict[str, Any]) -> dict[str, Any]:
    """Validate an imaging task's answer; returns what to store, raises if it breaks the contract."""
    status = ImagingStatus.model_validate(result)
    project_id = subject_project_id(task)
    if project_id is not None and status.project_id != project_id:
        raise ValueError(f"the status is of project {status.project_id}, but the task asked about project {project_id}")
    row = await _import_row(db, status.project_id, task.trust_id)
    min_k = max(row.min_k if row is not None else 0, DEFAULT_MIN_K)
    if status.k < min_k:
        raise ValueError(f"the trust applied k={status.k}, below the k={min_k} the hub asked for")
    # Defence in depth: the trust's gate releases only counts of at least k persons.
    if any(count.value is not None and count.value < status.k for count in released_counts(status)):
        raise ValueError(f"a released count is below the threshold k={status.k} the trust reported")
    if status.updated_at.tzinfo is None:
        raise ValueError("updated_at must carry a time zone")
    if status.updated_at > _now() + MAX_CLOCK_SKEW:
        raise ValueError("updated_at is in the future; check the trust's clock")
    return status.model_dump(mode="json")


async def record_outcome(db: AsyncSession, task: TrustTask, actor: Actor) -> None:
    """Store how an imaging task ended in the project's import row at that trust."""
    project_id = subject_project_id(task)
    if project_id is None:
        return
    error = task.error or {}
    if task.status is TaskStatus.CANCELLED and error.get("code") == _DELIBERATE_CANCEL:
        return  # the hub withdrew it (project or import deleted): nothing went wrong at the trust
    row = await lock_import_row(db, project_id, task.trust_id)
    now = _now()
    details: dict[str, Any] = {"trust_id": str(task.trust_id), "task_id": str(task.id), "type": task.type}
    if task.status is not TaskStatus.COMPLETED:
        row.error_code = str(error.get("code") or "unspecified")
        row.error_detail = str(error.get("detail") or "")
        row.error_task_type = task.type
        row.error_at = now
        await db.flush()
        details["error_code"] = row.error_code
        await audit.record(db, actor, "imaging.task_failed", PROJECT_SUBJECT, project_id, details)
        return
    status = ImagingStatus.model_validate(task.result)  # accepted on the way in
    if row.reported_at is not None and status.updated_at < row.reported_at:
        return  # an older answer that arrived late: the stored status is newer
    row.error_code = row.error_detail = row.error_task_type = None
    row.error_at = None
    if row.reported_at is not None and status.updated_at == row.reported_at:
        row.received_at = now  # the same status again: it is still current
        await db.flush()
        return
    row.status = status.model_dump(mode="json")
    row.reported_at = status.updated_at
    row.received_at = now
    row.task_id = task.id
    await db.flush()
    details.update({"complete": status.complete, "deleted": status.deleted, "k": status.k})
    await audit.record(db, actor, "imaging.status_recorded", PROJECT_SUBJECT, project_id, details)
