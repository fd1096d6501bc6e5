"""Request and response bodies of the imaging routes.

A status is the wire contract's own :class:`~flip_core.imaging.ImagingStatus`, shown as the trust sent it:
every count a gated count ``{value, suppressed}``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from flip_api.schemas.common import Public, Strict
from flip_api.services.imaging import QueuedImagingTask
from flip_api.services.imaging_views import ImagingView, Staleness, TaskState
from flip_api.services.trusts import TrustStatus
from flip_core.imaging import ImagingStatus
from flip_core.tasks import TaskStatus, TaskType

MAX_TRUSTS = 500


class ImagingTrustsIn(Strict):
    """Which approved trusts to act at; leave ``trust_ids`` out for every trust that approved the project."""

    trust_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=MAX_TRUSTS)


class ImagingErrorOut(Public):
    code: str = Field(description="a safe category, from the trust or the hub (invalid_result, lease_expired, …)")
    detail: str
    task_type: str | None = Field(description="the imaging task that failed")
    at: datetime | None


class WaitingTaskOut(Public):
    id: uuid.UUID
    type: TaskType
    state: TaskState
    created_at: datetime


class TrustImagingOut(Public):
    trust_id: uuid.UUID
    trust_code: str
    trust_name: str
    trust_status: TrustStatus
    requested: bool = Field(description="whether the hub asked this trust to import (not for approvals before imaging)")
    status: ImagingStatus | None = Field(description="the latest status the trust reported; null before its first")
    reported_at: datetime | None = Field(description="the status's own time (the trust's updated_at)")
    received_at: datetime | None = Field(description="when the hub last received this status")
    task_id: uuid.UUID | None = Field(description="the task whose answer is the status")
    last_error: ImagingErrorOut | None = Field(description="the last imaging task that failed; cleared by an answer")
    pending: bool = Field(description="an imaging task for this project is queued or running at the trust")
    pending_tasks: list[WaitingTaskOut]
    stale: bool = Field(description="true: the status is only the last known one")
    stale_reason: Staleness | None


class ImagingOut(BaseModel):
    project_id: uuid.UUID
    dicom_to_nifti: bool
    refresh_s: float = Field(description="how often the hub asks a running import for its status")
    trusts: list[TrustImagingOut] = Field(description="one entry per trust that approved the project")

    @classmethod
    def of(cls, view: ImagingView) -> ImagingOut:
        return cls(
            project_id=view.project_id,
            dicom_to_nifti=view.dicom_to_nifti,
            refresh_s=view.refresh_s,
            trusts=[TrustImagingOut.model_validate(t) for t in view.trusts],
        )


class QueuedTaskOut(BaseModel):
    trust_id: uuid.UUID
    trust_code: str
    task_id: uuid.UUID
    type: TaskType
    status: TaskStatus


class ImagingTasksOut(BaseModel):
    project_id: uuid.UUID
    tasks: list[QueuedTaskOut] = Field(description="one task queued per trust")

    @classmethod
    def of(cls, project_id: uuid.UUID, queued: list[QueuedImagingTask]) -> ImagingTasksOut:
        return cls(
            project_id=project_id,
            tasks=[
                QueuedTaskOut(
                    trust_id=q.trust.id,
                    trust_code=q.trust.code,
                    task_id=q.task.id,
                    type=TaskType(q.task.type),
                    status=q.task.status,
                )
                for q in queued
            ],
        )
