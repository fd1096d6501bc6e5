"""Training jobs: initiate (validated, queued), queue position, stop; the watchdog's bound on the queue.

Initiating checks everything before anything is queued: the model may change (no training queued or
running), every required file is uploaded and clean, every selected trust exists and approved the
project, and the run configuration is valid for the job type. Then one job is QUEUED and the model with
it. Scheduling onto FL nets (oldest job first per free net), bundling and submission are the
scheduler's; a job nobody takes within ``FLIP_FL_QUEUE_TIMEOUT_S`` becomes ERROR with the reason, so no
job stays QUEUED forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import ApiError, Conflict, NotFound, Unprocessable
from flip_api.db.models import (
    FileStatus,
    FlJob,
    JobType,
    Model,
    ModelFile,
    ModelStatus,
    Trust,
)
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.imaging import approved_trusts
from flip_api.services.job_types import job_type_spec, missing_files
from flip_api.services.models import ACTIVE_MODEL_STATES, MODEL_SUBJECT, get_model, jobs_ahead, model_for_change
from flip_api.services.rbac import Principal

MAX_TRUSTS = 500
# Strategies each job type may use (the template implements exactly these).
STRATEGIES: dict[JobType, tuple[str, ...]] = {
    JobType.STANDARD: ("fedavg",),
    JobType.FED_OPT: ("fedadam", "fedyogi", "fedadagrad"),
    JobType.EVALUATION: ("none",),
}


class JobConfig(BaseModel):
    """A run's configuration, as the researcher sends it; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1, le=1000)
    strategy: str | None = Field(None, description="default: the job type's first (fedavg, fedadam, none)")
    min_clients: int | None = Field(None, ge=1, description="k of n: trusts that must reply each round (default n)")
    round_timeout_s: int = Field(600, ge=10, le=86400, description="straggler timeout per round")
    # Passed to the researcher's code; when left out, the values in its config.json apply.
    local_epochs: int | None = Field(None, ge=1, le=1000)
    learning_rate: float | None = Field(None, gt=0, le=10)
    seed: int = Field(0, ge=0, le=2**31 - 1)


def validate_config(job_type: JobType, raw: dict[str, Any] | None, trusts: int) -> dict[str, Any]:
    """The complete, checked configuration for a run at ``trusts`` trusts (422 ``invalid_config``)."""
    try:
        config = JobConfig.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise Unprocessable(f"config.{where}: {first['msg']}", code="invalid_config") from exc
    allowed = STRATEGIES[job_type]
    strategy = config.strategy or allowed[0]
    if strategy not in allowed:
        raise Unprocessable(
            f"config.strategy: {strategy!r} is not available for {job_type.value} jobs (allowed: {', '.join(allowed)})",
            code="invalid_config",
        )
    if job_type is JobType.EVALUATION and config.rounds != 1:
        raise Unprocessable("config.rounds: an evaluation job has exactly 1 round", code="invalid_config")
    min_clients = config.min_clients if config.min_clients is not None else trusts
    if min_clients > trusts:
        raise Unprocessable(
            f"config.min_clients: {min_clients} is more than the {trusts} selected trusts", code="invalid_config"
        )
    return {**config.model_dump(), "strategy": strategy, "min_clients": min_clients}


def job_not_found() -> NotFound:
    return NotFound("job not found", code="job_not_found")


def _now() -> datetime:
    return datetime.now(UTC)


async def _selected(db: AsyncSession, project_id: uuid.UUID, trust_ids: Sequence[uuid.UUID] | None) -> list[Trust]:
    approved = {t.id: t for t in await approved_trusts(db, project_id)}
    if trust_ids is None:
        if not approved:
            raise ApiError("no trust has approved this project", code="trust_not_approved")
        return sorted(approved.values(), key=lambda t: t.code)  # the job lists trusts by code
    chosen: list[Trust] = []
    for trust_id in dict.fromkeys(trust_ids):  # duplicates count once
        trust = approved.get(trust_id)
        if trust is None:
            exists = await db.get(Trust, trust_id)
            if exists is None:
                raise ApiError(f"trust {trust_id} does not exist", code="unknown_trust")
            raise ApiError(f"trust {exists.code} has not approved this project", code="trust_not_approved")
        chosen.append(trust)
    return chosen


async def live_job(db: AsyncSession, model_id: uuid.UUID) -> FlJob | None:
    """The model's job that is queued or running, if any."""
    job: FlJob | None = await db.scalar(
        select(FlJob)
        .where(FlJob.model_id == model_id, FlJob.status.in_(ACTIVE_MODEL_STATES))
        .order_by(FlJob.queued_at.desc())
        .limit(1)
    )
    return job


async def initiate(
    db: AsyncSession,
    principal: Principal,
    model_id: uuid.UUID,
    *,
    trust_ids: Sequence[uuid.UUID] | None,
    config: dict[str, Any] | None,
) -> FlJob:
    """Queue a training run of the model at the selected trusts (default: every approving trust)."""
    model, _ = await model_for_change(db, principal, model_id)
    spec = job_type_spec(model.backend, model.job_type)
    clean = await db.scalars(
        select(ModelFile.name).where(ModelFile.model_id == model.id, ModelFile.status == FileStatus.CLEAN)
    )
    missing = missing_files(spec, clean.all())
    if missing:
        raise Conflict(f"upload these files first: {', '.join(missing)}", code="missing_files")
    trusts = await _selected(db, model.project_id, trust_ids)
    checked = validate_config(model.job_type, config, len(trusts))
    attempts = await db.scalar(select(func.count()).select_from(FlJob).where(FlJob.model_id == model.id))
    job = FlJob(
        model_id=model.id,
        project_id=model.project_id,
        backend=model.backend,
        status=ModelStatus.QUEUED,
        trust_ids=[str(t.id) for t in trusts],
        config=checked,
        attempt=(attempts or 0) + 1,
        created_by=principal.id,
        queued_at=_now(),
    )
    db.add(job)
    model.status = ModelStatus.QUEUED
    await db.flush()
    await audit.record(
        db,
        Actor.user(principal.id),
        "model.training_requested",
        MODEL_SUBJECT,
        model.id,
        {"job_id": str(job.id), "trusts": [t.code for t in trusts], "config": checked, "attempt": job.attempt},
    )
    return job


async def queue_position(db: AsyncSession, job: FlJob) -> int | None:
    """1 for the next job of its backend to be scheduled; None once it left the queue."""
    if job.status is not ModelStatus.QUEUED:
        return None
    return await jobs_ahead(db, job) + 1


async def list_jobs(db: AsyncSession, principal: Principal, model_id: uuid.UUID) -> list[FlJob]:
    model, _ = await get_model(db, principal, model_id)
    rows = await db.scalars(select(FlJob).where(FlJob.model_id == model.id).order_by(FlJob.queued_at.desc()))
    return list(rows.all())


async def stop(db: AsyncSession, principal: Principal, model_id: uuid.UUID) -> FlJob:
    """Stop the model's training. A queued job leaves the queue at once; a running one is marked STOPPED
    (the model then ignores late reports) and its run is aborted on the net by the scheduler."""
    model, _ = await model_for_change(db, principal, model_id, editable=False)
    job = await live_job(db, model.id)
    if job is None:
        raise Conflict(f"model is {model.status.value}: no training to stop", code="nothing_to_stop")
    was = job.status
    _end(job, model, ModelStatus.STOPPED, "stopped by a researcher")
    await audit.record(
        db,
        Actor.user(principal.id),
        "model.training_stopped",
        MODEL_SUBJECT,
        model.id,
        {"job_id": str(job.id), "was": was.value},
    )
    return job


def _end(job: FlJob, model: Model, status: ModelStatus, reason: str) -> None:
    job.status = status
    job.reason = reason
    job.finished_at = _now()
    if model.status in ACTIVE_MODEL_STATES:
        model.status = status


async def expire_queue(db: AsyncSession, *, timeout_s: float, now: datetime | None = None) -> int:
    """Watchdog: jobs QUEUED longer than ``timeout_s`` become ERROR (no FL net took them); returns how many."""
    now = now or _now()
    rows = await db.execute(
        select(FlJob, Model)
        .join(Model, Model.id == FlJob.model_id)
        .where(FlJob.status == ModelStatus.QUEUED, FlJob.queued_at < now - timedelta(seconds=timeout_s))
        .with_for_update(of=FlJob, skip_locked=True)
    )
    expired = 0
    for job, model in rows.all():
        waited = int((now - job.queued_at).total_seconds())
        _end(job, model, ModelStatus.ERROR, f"no {job.backend.value} FL net took the job within {waited} s")
        await audit.record(
            db,
            Actor.system("worker"),
            "model.training_failed",
            MODEL_SUBJECT,
            model.id,
            {"job_id": str(job.id), "reason": job.reason},
        )
        expired += 1
    return expired
