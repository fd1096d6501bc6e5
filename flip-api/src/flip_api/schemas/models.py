"""Request and response bodies of the model, file and job-type routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from flip_api.db.models import FileStatus, FlBackend, FlJob, JobType, ModelFile, ModelStatus
from flip_api.schemas.common import LongText, Name, Public, Strict
from flip_api.services.job_types import JobTypeSpec
from flip_api.services.models import ModelView
from flip_api.storage import PresignedUpload

FileName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ModelIn(Strict):
    name: Name
    description: LongText = ""
    backend: FlBackend = FlBackend.FLOWER
    job_type: JobType = JobType.STANDARD


class ModelPatch(Strict):
    """Fields to change; leave a field out to keep it."""

    name: Name | None = None
    description: LongText | None = None
    backend: FlBackend | None = None
    job_type: JobType | None = None


class RequiredFileOut(Public):
    name: str
    purpose: str


class JobTypeOut(Public):
    backend: FlBackend
    job_type: JobType
    title: str
    description: str
    required_files: list[RequiredFileOut]

    @classmethod
    def of(cls, spec: JobTypeSpec) -> JobTypeOut:
        return cls(
            backend=spec.backend,
            job_type=spec.job_type,
            title=spec.title,
            description=spec.description,
            required_files=[RequiredFileOut(name=f.name, purpose=f.purpose) for f in spec.required_files],
        )


class FindingOut(Public):
    tool: str = Field(description="picklescan, bandit, or flip (the hub's own checks)")
    severity: str
    message: str
    line: int | None = None


class ModelFileOut(Public):
    id: uuid.UUID
    name: str
    status: FileStatus = Field(description="UPLOADING, SCANNING, CLEAN (promoted) or BLOCKED (deleted by the scan)")
    size: int | None
    sha256: str | None
    advisory: bool = Field(description="true: the scan found something worth reading that did not block the file")
    findings: list[FindingOut]
    uploaded_by: uuid.UUID | None
    created_at: datetime
    scanned_at: datetime | None

    @classmethod
    def of(cls, row: ModelFile) -> ModelFileOut:
        return cls(
            id=row.id,
            name=row.name,
            status=row.status,
            size=row.size,
            sha256=row.sha256,
            advisory=row.advisory,
            findings=[FindingOut.model_validate(f) for f in row.findings],
            uploaded_by=row.uploaded_by,
            created_at=row.created_at,
            scanned_at=row.scanned_at,
        )


class ModelTrustOut(Public):
    id: uuid.UUID
    code: str
    name: str


class JobIn(Strict):
    """Start training: at the selected trusts (default every trust that approved the project), with a config."""

    trust_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=500)
    config: dict[str, Any] | None = Field(
        None,
        description="rounds (1-1000), strategy, min_clients (k of n), round_timeout_s, local_epochs, "
        "learning_rate, seed; unknown keys are errors",
    )


class JobOut(Public):
    id: uuid.UUID
    model_id: uuid.UUID
    status: ModelStatus
    backend: FlBackend
    trust_ids: list[uuid.UUID]
    config: dict[str, Any]
    attempt: int
    queue_position: int | None = Field(description="1 = next to run on a free FL net; null once it left the queue")
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None = Field(description="why it ended as ERROR or STOPPED")
    bundle_sha256: str | None

    @classmethod
    def of(cls, job: FlJob, queue_position: int | None) -> JobOut:
        return cls(
            id=job.id,
            model_id=job.model_id,
            status=job.status,
            backend=job.backend,
            trust_ids=[uuid.UUID(t) for t in job.trust_ids],
            config=job.config,
            attempt=job.attempt,
            queue_position=queue_position,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            reason=job.reason,
            bundle_sha256=job.bundle_sha256,
        )


class ModelOut(Public):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    description: str
    backend: FlBackend
    job_type: JobType
    status: ModelStatus
    editable: bool = Field(description="details and files may change (no training queued or running)")
    created_by: uuid.UUID
    created_at: datetime
    updated_at: datetime
    required_files: list[RequiredFileOut] = Field(description="what the job type needs from you")
    missing_files: list[str] = Field(description="required files with no clean upload yet")
    files: list[ModelFileOut]
    trusts: list[ModelTrustOut] = Field(description="the trusts that approved the project: where it trains")
    job: JobOut | None = Field(description="the latest training job, if it was ever initiated")

    @classmethod
    def of(cls, view: ModelView) -> ModelOut:
        model = view.model
        return cls(
            id=model.id,
            project_id=model.project_id,
            name=model.name,
            description=model.description,
            backend=model.backend,
            job_type=model.job_type,
            status=model.status,
            editable=view.editable,
            created_by=model.created_by,
            created_at=model.created_at,
            updated_at=model.updated_at,
            required_files=[RequiredFileOut(name=f.name, purpose=f.purpose) for f in view.spec.required_files],
            missing_files=view.missing_files,
            files=[ModelFileOut.of(f) for f in view.files],
            trusts=[ModelTrustOut(id=t.id, code=t.code, name=t.name) for t in view.trusts],
            job=JobOut.of(view.job, view.queue_position) if view.job is not None else None,
        )


class ModelSummaryOut(Public):
    id: uuid.UUID
    name: str
    backend: FlBackend
    job_type: JobType
    status: ModelStatus
    created_at: datetime


class UploadIn(Strict):
    name: FileName
    size: int = Field(ge=0, description="bytes you will upload; the presigned policy refuses anything larger")


class PresignedUploadOut(Public):
    url: str
    fields: dict[str, str] = Field(description="form fields to send with the file (an HTML form POST)")
    expires_at: datetime


class UploadOut(Public):
    file: ModelFileOut
    upload: PresignedUploadOut

    @classmethod
    def of(cls, row: ModelFile, grant: PresignedUpload) -> UploadOut:
        return cls(
            file=ModelFileOut.of(row),
            upload=PresignedUploadOut(url=grant.url, fields=dict(grant.fields), expires_at=grant.expires_at),
        )
