"""Imaging task handlers: the agent relays them to the trust's imaging-api.

``create_imaging`` starts (or resumes) the import of an approved project's studies and answers at once
with its status; the import runs on inside the imaging-api, and the hub follows it with
``get_imaging_status``.  ``reimport_studies`` queues the FAILED studies again; ``delete_imaging``
removes the project's images.  Each answer is checked against :class:`~flip_core.imaging.ImagingStatus`
before it goes to the outbox, so only gated counts and fixed reason codes can ever reach the hub.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from flip_core.imaging import CreateImagingPayload, ImagingErrorCode, ImagingProjectPayload, ImagingStatus
from flip_core.tasks import TaskType
from flip_trust_api.handlers import HandlerRegistry, ServicePort, TaskContext, TaskFailure


def _imaging(ctx: TaskContext) -> ServicePort:
    client = ctx.services.imaging
    if client is None:
        raise TaskFailure(
            ImagingErrorCode.IMAGING_UNAVAILABLE.value,
            "this trust has no imaging-api configured (FLIP_AGENT_IMAGING_URL)",
        )
    return client


async def _relay(path: str, request: CreateImagingPayload | ImagingProjectPayload, ctx: TaskContext) -> dict[str, Any]:
    answer = await _imaging(ctx).post(path, request)
    try:
        status = ImagingStatus.model_validate(answer)
    except ValidationError as exc:
        raise TaskFailure(
            ImagingErrorCode.INTERNAL_ERROR.value, "the imaging-api answered outside the imaging contract"
        ) from exc
    if status.project_id != request.project_id or status.k < request.min_k:
        raise TaskFailure(ImagingErrorCode.INTERNAL_ERROR.value, "the imaging-api answered for another request")
    return status.model_dump(mode="json")


async def create_imaging(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Import the studies of the project's frozen cohort (idempotent); answers with the status so far."""
    return await _relay("/imaging/import", CreateImagingPayload.model_validate(payload), ctx)


async def get_imaging_status(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The project's import status at this trust, in gated counts."""
    return await _relay("/imaging/status", ImagingProjectPayload.model_validate(payload), ctx)


async def reimport_studies(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Retry the project's FAILED studies."""
    return await _relay("/imaging/reimport", ImagingProjectPayload.model_validate(payload), ctx)


async def delete_imaging(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Remove every image of the project at this trust."""
    return await _relay("/imaging/delete", ImagingProjectPayload.model_validate(payload), ctx)


def register(registry: HandlerRegistry) -> None:
    """Add the imaging handlers (each call is short: the import itself runs in the imaging-api)."""
    registry.register(TaskType.CREATE_IMAGING, create_imaging, concurrency=2)
    registry.register(TaskType.GET_IMAGING_STATUS, get_imaging_status, concurrency=4)
    registry.register(TaskType.REIMPORT_STUDIES, reimport_studies, concurrency=2)
    registry.register(TaskType.DELETE_IMAGING, delete_imaging, concurrency=1)
