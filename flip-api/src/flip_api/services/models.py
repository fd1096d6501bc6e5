"""Models: FL training definitions under an approved project.

A model belongs to a project that is APPROVED and trains at the trusts that approved it (it inherits
them; trusts that approve later join). Readers of the project may read its models; its editors (the
owner, or CAN_MANAGE_PROJECTS) create, change and delete them, as for every other change to a project.
A model's definition and files change only while no training of it is queued or running.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict, NotFound
from flip_api.db.models import (
    EDITABLE_MODEL_STATES,
    FileStatus,
    FlBackend,
    FlJob,
    JobType,
    Model,
    ModelFile,
    ModelStatus,
    Project,
    ProjectStatus,
    Trust,
)
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.imaging import approved_trusts
from flip_api.services.job_types import JobTypeSpec, job_type_spec, missing_files
from flip_api.services.project_access import can_read, get_project, project_for_change
from flip_api.services.rbac import Principal

MODEL_SUBJECT = "model"
# Training the model: these states mean a job is queued or running, and deleting the model stops it.
ACTIVE_MODEL_STATES: frozenset[ModelStatus] = frozenset(
    {ModelStatus.QUEUED, ModelStatus.PREPARING, ModelStatus.RUNNING}
)


def model_not_found() -> NotFound:
    """The one answer for a model that does not exist, is deleted, or whose project the caller may not read."""
    return NotFound("model not found", code="model_not_found")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ModelView:
    model: Model
    spec: JobTypeSpec
    files: list[ModelFile]
    trusts: list[Trust]
    job: FlJob | None = None
    queue_position: int | None = None

    @property
    def missing_files(self) -> list[str]:
        return missing_files(self.spec, (f.name for f in self.files if f.status is FileStatus.CLEAN))

    @property
    def editable(self) -> bool:
        return self.model.status in EDITABLE_MODEL_STATES


async def _live_model(db: AsyncSession, model_id: uuid.UUID, *, lock: bool = False) -> Model:
    stmt = select(Model).where(Model.id == model_id, Model.deleted_at.is_(None))
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    model = await db.scalar(stmt)
    if model is None:
        raise model_not_found()
    return model


async def get_model(db: AsyncSession, principal: Principal, model_id: uuid.UUID) -> tuple[Model, Project]:
    """A live model whose project the caller may read (404 otherwise, so that existence does not leak)."""
    model = await _live_model(db, model_id)
    project = await db.get(Project, model.project_id)
    if project is None or project.deleted_at is not None or not await can_read(db, principal, project):
        raise model_not_found()
    return model, project


async def model_for_change(
    db: AsyncSession, principal: Principal, model_id: uuid.UUID, *, editable: bool = True
) -> tuple[Model, Project]:
    """Lock a live model the caller may change: 404/403 as for its project; with ``editable``, 409 unless no
    training of it is queued or running."""
    model, _ = await get_model(db, principal, model_id)
    project = await project_for_change(db, principal, model.project_id)
    model = await _live_model(db, model_id, lock=True)
    if editable and model.status not in EDITABLE_MODEL_STATES:
        raise Conflict(
            f"model is {model.status.value}: stop its training before changing it", code="model_not_editable"
        )
    return model, project


async def model_view_with_trusts(db: AsyncSession, model: Model) -> ModelView:
    """The model with its files, where it trains, and its latest job (with its place in the queue)."""
    files = await db.scalars(
        select(ModelFile).where(ModelFile.model_id == model.id).order_by(ModelFile.name, ModelFile.created_at)
    )
    job = await db.scalar(select(FlJob).where(FlJob.model_id == model.id).order_by(FlJob.queued_at.desc()).limit(1))
    position = await jobs_ahead(db, job) + 1 if job is not None and job.status is ModelStatus.QUEUED else None
    trusts = await approved_trusts(db, model.project_id)
    spec = job_type_spec(model.backend, model.job_type)
    return ModelView(model, spec, list(files.all()), trusts, job, position)


async def jobs_ahead(db: AsyncSession, job: FlJob) -> int:
    """Queued jobs of the same backend that go before ``job`` (first come, first served)."""
    ahead = await db.scalar(
        select(func.count())
        .select_from(FlJob)
        .where(
            FlJob.status == ModelStatus.QUEUED,
            FlJob.backend == job.backend,
            or_(FlJob.queued_at < job.queued_at, and_(FlJob.queued_at == job.queued_at, FlJob.id < job.id)),
        )
    )
    return ahead or 0


async def list_models(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> list[Model]:
    project = await get_project(db, principal, project_id)
    rows = await db.scalars(
        select(Model).where(Model.project_id == project.id, Model.deleted_at.is_(None)).order_by(Model.created_at)
    )
    return list(rows.all())


async def _name_taken(db: AsyncSession, project_id: uuid.UUID, name: str, *, other_than: uuid.UUID | None) -> bool:
    stmt = select(Model.id).where(
        Model.project_id == project_id, func.lower(Model.name) == name.lower(), Model.deleted_at.is_(None)
    )
    if other_than is not None:
        stmt = stmt.where(Model.id != other_than)
    return await db.scalar(stmt) is not None


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"the project already has a model named {name!r}", code="model_name_taken")


async def create_model(
    db: AsyncSession,
    principal: Principal,
    project_id: uuid.UUID,
    *,
    name: str,
    description: str,
    backend: FlBackend,
    job_type: JobType,
) -> Model:
    """A new PENDING model under an APPROVED project (409 ``project_not_approved`` before approval)."""
    project = await project_for_change(db, principal, project_id)
    if project.status is not ProjectStatus.APPROVED:
        raise Conflict(
            f"project is {project.status.value}: models belong to approved projects", code="project_not_approved"
        )
    if await _name_taken(db, project.id, name, other_than=None):
        raise _name_conflict(name)
    model = Model(
        project_id=project.id,
        name=name,
        description=description,
        backend=backend,
        job_type=job_type,
        status=ModelStatus.PENDING,
        created_by=principal.id,
    )
    db.add(model)
    try:
        await db.flush()
    except IntegrityError as exc:  # a concurrent create of the same name won the unique index
        raise _name_conflict(name) from exc
    await audit.record(
        db,
        Actor.user(principal.id),
        "model.created",
        MODEL_SUBJECT,
        model.id,
        {"project_id": str(project.id), "name": name, "backend": backend.value, "job_type": job_type.value},
    )
    return model


async def update_model(
    db: AsyncSession,
    principal: Principal,
    model_id: uuid.UUID,
    *,
    name: str | None = None,
    description: str | None = None,
    backend: FlBackend | None = None,
    job_type: JobType | None = None,
) -> Model:
    """Change a model's details while it is editable; fields left None stay as they are."""
    model, _ = await model_for_change(db, principal, model_id)
    changes: dict[str, str] = {}
    if name is not None and name != model.name:
        if await _name_taken(db, model.project_id, name, other_than=model.id):
            raise _name_conflict(name)
        model.name = changes["name"] = name
    if description is not None and description != model.description:
        model.description = description
        changes["description"] = "changed"
    if backend is not None and backend is not model.backend:
        model.backend = backend
        changes["backend"] = backend.value
    if job_type is not None and job_type is not model.job_type:
        model.job_type = job_type
        changes["job_type"] = job_type.value
    if changes:
        try:
            await db.flush()
        except IntegrityError as exc:
            raise _name_conflict(name or model.name) from exc
        await audit.record(db, Actor.user(principal.id), "model.updated", MODEL_SUBJECT, model.id, changes)
    return model


async def _stop_training(db: AsyncSession, model: Model, reason: str) -> bool:
    """End the model's queued or running job (STOPPED; the scheduler aborts a run on its net)."""
    if model.status not in ACTIVE_MODEL_STATES:
        return False
    model.status = ModelStatus.STOPPED
    await db.execute(
        update(FlJob)
        .where(FlJob.model_id == model.id, FlJob.status.in_(ACTIVE_MODEL_STATES))
        .values(status=ModelStatus.STOPPED, reason=reason, finished_at=_now())
    )
    return True


async def delete_model(db: AsyncSession, principal: Principal, model_id: uuid.UUID) -> Model:
    """Soft-delete a model. Training of it that is queued or running is stopped: the model becomes STOPPED
    (and ignores late callbacks); the scheduler drops a queued job and aborts a running one."""
    model, _ = await model_for_change(db, principal, model_id, editable=False)
    stopped = await _stop_training(db, model, "the model was deleted")
    model.deleted_at = _now()
    await audit.record(
        db,
        Actor.user(principal.id),
        "model.deleted",
        MODEL_SUBJECT,
        model.id,
        {"project_id": str(model.project_id), "stopped_training": stopped},
    )
    return model


async def delete_for_deleted_project(db: AsyncSession, project_id: uuid.UUID, *, actor: Actor) -> int:
    """A deleted project's models go with it (training stopped as for :func:`delete_model`); returns how many."""
    rows = await db.scalars(
        select(Model).where(Model.project_id == project_id, Model.deleted_at.is_(None)).with_for_update()
    )
    deleted = 0
    for model in rows.all():
        stopped = await _stop_training(db, model, "the project was deleted")
        model.deleted_at = _now()
        await audit.record(
            db,
            actor,
            "model.deleted",
            MODEL_SUBJECT,
            model.id,
            {"project_id": str(project_id), "stopped_training": stopped, "reason": "the project was deleted"},
        )
        deleted += 1
    return deleted
