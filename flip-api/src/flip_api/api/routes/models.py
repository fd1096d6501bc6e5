"""Models under approved projects, their files, and the job types they can use.

Readers of the project may read its models and download their clean files; its editors (owner or
CAN_MANAGE_PROJECTS) create, change and delete models and upload or delete files. A model or project the
caller may not read answers 404.

Files go up either through the hub (``PUT /models/{id}/files/{name}`` with the bytes as the body) or,
when the object store is S3, straight to the bucket (``POST /models/{id}/uploads`` for a presigned form,
then ``POST /models/{id}/files/{file_id}/complete``). Either way the answer comes after the scan: 200/201
with the clean file, or 422 ``file_blocked`` with the reason (the file's row stays, BLOCKED, with its
findings).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse

from flip_api.api.deps import CurrentUser, HubDep, SessionDep
from flip_api.schemas.fl import EventOut, JobDetailOut, ResultOut
from flip_api.schemas.models import (
    FileName,
    JobIn,
    JobOut,
    JobTypeOut,
    ModelFileOut,
    ModelIn,
    ModelOut,
    ModelPatch,
    ModelSummaryOut,
    UploadIn,
    UploadOut,
)
from flip_api.services import fl_jobs, fl_runs, model_files, models
from flip_api.services.job_types import JOB_TYPES

router = APIRouter(tags=["models"])

_DOWNLOAD_TTL_S = 60


@router.get("/job-types", response_model=list[JobTypeOut])
async def list_job_types(user: CurrentUser) -> list[JobTypeOut]:
    """Every (backend, job type) and the files a model of that kind needs before it can train."""
    return [JobTypeOut.of(spec) for spec in JOB_TYPES.values()]


@router.post("/projects/{project_id}/models", response_model=ModelOut, status_code=status.HTTP_201_CREATED)
async def create_model(project_id: uuid.UUID, body: ModelIn, user: CurrentUser, db: SessionDep) -> ModelOut:
    """A new model (PENDING) under an approved project; it trains at the trusts that approved the project."""
    model = await models.create_model(
        db,
        user,
        project_id,
        name=body.name,
        description=body.description,
        backend=body.backend,
        job_type=body.job_type,
    )
    await db.commit()
    return ModelOut.of(await models.model_view_with_trusts(db, model))


@router.get("/projects/{project_id}/models", response_model=list[ModelSummaryOut])
async def list_models(project_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> list[ModelSummaryOut]:
    return [ModelSummaryOut.model_validate(m) for m in await models.list_models(db, user, project_id)]


@router.get("/models/{model_id}", response_model=ModelOut)
async def get_model(model_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> ModelOut:
    """The model, its files with their scan results, what is still missing, and where it trains."""
    model, _ = await models.get_model(db, user, model_id)
    return ModelOut.of(await models.model_view_with_trusts(db, model))


@router.patch("/models/{model_id}", response_model=ModelOut)
async def update_model(model_id: uuid.UUID, body: ModelPatch, user: CurrentUser, db: SessionDep) -> ModelOut:
    """Change details while no training is queued or running (409 ``model_not_editable`` otherwise)."""
    model = await models.update_model(
        db, user, model_id, name=body.name, description=body.description, backend=body.backend, job_type=body.job_type
    )
    await db.commit()
    return ModelOut.of(await models.model_view_with_trusts(db, model))


@router.delete("/models/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_model(model_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> Response:
    """Soft-delete the model; training that is queued or running is stopped."""
    await models.delete_model(db, user, model_id)
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/models/{model_id}/files", response_model=list[ModelFileOut])
async def list_files(model_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> list[ModelFileOut]:
    return [ModelFileOut.of(f) for f in await model_files.list_files(db, user, model_id)]


@router.put(
    "/models/{model_id}/files/{name}",
    response_model=ModelFileOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
)
async def upload_file(
    model_id: uuid.UUID,
    name: FileName,
    request: Request,
    user: CurrentUser,
    hub: HubDep,
    content_length: Annotated[int | None, Header(ge=0)] = None,
) -> ModelFileOut:
    """Upload a file (the request body is its bytes): quarantined, scanned, and promoted if clean.

    A new upload of a name replaces the earlier file of that name once it is clean.
    """
    row = await model_files.upload(hub, user, model_id, name, request.stream(), declared_size=content_length)
    return ModelFileOut.of(row)


@router.post("/models/{model_id}/uploads", response_model=UploadOut, status_code=status.HTTP_201_CREATED)
async def start_upload(model_id: uuid.UUID, body: UploadIn, user: CurrentUser, hub: HubDep) -> UploadOut:
    """A presigned form to upload one file straight to the object store (S3 only; 409
    ``presigned_upload_unavailable`` when the hub keeps files itself). Then call ``complete``."""
    row, grant = await model_files.presigned_upload(hub, user, model_id, body.name, body.size)
    return UploadOut.of(row, grant)


@router.post("/models/{model_id}/files/{file_id}/complete", response_model=ModelFileOut)
async def complete_upload(model_id: uuid.UUID, file_id: uuid.UUID, user: CurrentUser, hub: HubDep) -> ModelFileOut:
    """Scan a file uploaded with a presigned form, and promote it if clean."""
    return ModelFileOut.of(await model_files.complete_upload(hub, user, model_id, file_id))


@router.get("/models/{model_id}/files/{file_id}/content", response_model=None)
async def download_file(
    model_id: uuid.UUID, file_id: uuid.UUID, user: CurrentUser, hub: HubDep, db: SessionDep
) -> Response:
    """A clean file's bytes: streamed by the hub, or a redirect to a short-lived presigned URL (S3)."""
    row = await model_files.clean_file(db, user, model_id, file_id)
    key = row.object_key
    assert key is not None
    url = await asyncio.to_thread(hub.objects.presigned_download, key, ttl_s=_DOWNLOAD_TTL_S, filename=row.name)
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.name)}",
        "ETag": f'"{row.sha256}"',
    }
    if row.size is not None:
        headers["Content-Length"] = str(row.size)
    return StreamingResponse(hub.objects.open_chunks(key), media_type="application/octet-stream", headers=headers)


@router.delete("/models/{model_id}/files/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(model_id: uuid.UUID, file_id: uuid.UUID, user: CurrentUser, hub: HubDep) -> Response:
    await model_files.delete_file(hub, user, model_id, file_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/models/{model_id}/jobs", response_model=JobOut, status_code=status.HTTP_201_CREATED)
async def initiate_training(model_id: uuid.UUID, body: JobIn, user: CurrentUser, db: SessionDep) -> JobOut:
    """Queue training at the selected trusts. Refused, with nothing queued, when a required file is missing
    or not clean (409 ``missing_files``), a trust does not exist or did not approve the project (400), or
    the config is invalid (422 ``invalid_config``)."""
    job = await fl_jobs.initiate(db, user, model_id, trust_ids=body.trust_ids, config=body.config)
    await db.commit()
    return JobOut.of(job, await fl_jobs.queue_position(db, job))


@router.get("/models/{model_id}/jobs", response_model=list[JobOut])
async def list_jobs(model_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> list[JobOut]:
    """Every training job of the model, newest first."""
    return [JobOut.of(j, await fl_jobs.queue_position(db, j)) for j in await fl_jobs.list_jobs(db, user, model_id)]


@router.post("/models/{model_id}/stop", response_model=JobOut)
async def stop_training(model_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> JobOut:
    """Stop the model's training: a queued job leaves the queue at once; the model becomes STOPPED."""
    job = await fl_jobs.stop(db, user, model_id)
    await db.commit()
    return JobOut.of(job, None)


@router.get("/models/{model_id}/jobs/{job_id}", response_model=JobDetailOut)
async def get_job(model_id: uuid.UUID, job_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> JobDetailOut:
    """One training job: its status, every round's metrics per trust (events) and its result files."""
    model, _ = await models.get_model(db, user, model_id)
    job = await fl_runs.job_of_model(db, model.id, job_id)
    return JobDetailOut(
        job=JobOut.of(job, await fl_jobs.queue_position(db, job)),
        log_tail=job.log_tail,
        events=[EventOut.of(e) for e in await fl_runs.events(db, job.id)],
        results=[ResultOut.of(r) for r in await fl_runs.results(db, job.id)],
    )


@router.get("/models/{model_id}/jobs/{job_id}/results/{name}", response_model=None)
async def download_result(
    model_id: uuid.UUID, job_id: uuid.UUID, name: str, user: CurrentUser, hub: HubDep, db: SessionDep
) -> Response:
    """The final model (``model.pt``) or its lineage (``lineage.json``) of a job whose results were uploaded."""
    model, _ = await models.get_model(db, user, model_id)
    job = await fl_runs.job_of_model(db, model.id, job_id)
    row = await fl_runs.result(db, job, name)
    key = fl_runs.result_key(job.id, row.name)
    url = await asyncio.to_thread(hub.objects.presigned_download, key, ttl_s=_DOWNLOAD_TTL_S, filename=row.name)
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.name)}",
        "ETag": f'"{row.sha256}"',
        "Content-Length": str(row.bytes),
    }
    media = "application/json" if row.name.endswith(".json") else "application/octet-stream"
    return StreamingResponse(hub.objects.open_chunks(key), media_type=media, headers=headers)
