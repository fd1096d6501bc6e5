"""The imaging-api's HTTP routes (inside the trust only; every route but ``/health`` needs the internal key).

Callers are the trust's agent (imports, status, re-import, deletion: answers are gated counts only) and
the trust's FL trainers (the images of READY studies by accession id).  The two image routes also accept
the trainer key (``FLIP_TRAINER_KEY``), which opens nothing else.  Each route declares what it
discloses in ``x-flip-disclosure`` (``gated``, ``row-level`` or ``none``); a test checks every route has one.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from flip_core.contract import INTERNAL_KEY_HEADER, TRAINER_KEY_HEADER, ErrorBody, ServiceState
from flip_core.imaging import CreateImagingPayload, ImagingErrorCode, ImagingProjectPayload, ImagingStatus
from flip_imaging import __version__
from flip_imaging.cohort_link import CohortLinkError
from flip_imaging.pacs import PacsError
from flip_imaging.service import ImagingError, ImagingService

log = logging.getLogger(__name__)

DISCLOSURE = "x-flip-disclosure"
Disclosure = Literal["gated", "row-level", "none"]
Kind = Literal["dicom", "nifti", "mask"]


def disclosure(kind: Disclosure) -> dict[str, Any]:
    return {DISCLOSURE: kind}


class FileOut(BaseModel):
    name: str
    bytes: int
    sha256: str


class FilesOut(BaseModel):
    kind: Kind
    files: list[FileOut]


class Health(BaseModel):
    status: ServiceState
    version: str
    pacs: ServiceState
    data_access: ServiceState


"""Header of the trainer key: the trust's FL trainers' key, good for the image routes only."""

_key_header = APIKeyHeader(name=INTERNAL_KEY_HEADER, auto_error=False, description="the trust's internal key")
PresentedKey = Annotated[str | None, Depends(_key_header)]
_trainer_header = APIKeyHeader(
    name=TRAINER_KEY_HEADER, auto_error=False, description="the trust's trainer key (image reads only)"
)
PresentedTrainerKey = Annotated[str | None, Depends(_trainer_header)]


def _same_key(presented: str | None, expected: str | None) -> bool:
    """Constant-time comparison; a key that is missing or not configured never matches."""
    if not presented or not expected:
        return False
    return secrets.compare_digest(presented.encode(), expected.encode())


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=detail, code=code).model_dump(), status_code=status, headers=headers)


def create_app(service: ImagingService, internal_key: str, trainer_key: str | None = None) -> FastAPI:
    """The application around one trust's :class:`ImagingService`.

    ``trainer_key``: when given, it is accepted (besides the internal key) on the routes FL trainers read.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            await service.cohorts.aclose()

    app = FastAPI(title="FLIP imaging-api", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    async def internal_caller(key: PresentedKey) -> None:
        if not _same_key(key, internal_key):
            raise ImagingError("not_authenticated", "internal key missing or wrong", status=401)

    async def trainer_or_internal_caller(key: PresentedKey, trainer: PresentedTrainerKey) -> None:
        if not (_same_key(key, internal_key) or _same_key(trainer, trainer_key)):
            raise ImagingError("not_authenticated", "internal or trainer key missing or wrong", status=401)

    Internal = Depends(internal_caller)
    TrainerOrInternal = Depends(trainer_or_internal_caller)
    gated: dict[str, Any] = {
        "response_model": ImagingStatus,
        "dependencies": [Internal],
        "openapi_extra": disclosure("gated"),
    }

    @app.exception_handler(ImagingError)
    async def _imaging_error(_: Request, exc: ImagingError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail, {"Retry-After": "5"} if exc.retryable else None)

    @app.exception_handler(CohortLinkError)
    async def _cohort_error(_: Request, exc: CohortLinkError) -> JSONResponse:
        status = {
            ImagingErrorCode.NOT_APPROVED: 404,
            ImagingErrorCode.NO_ACCESSION_COLUMN: 422,
            ImagingErrorCode.BELOW_THRESHOLD: 403,
            ImagingErrorCode.DATA_UNAVAILABLE: 503,
        }.get(exc.code, 502)
        return _error(status, exc.code.value, exc.detail, {"Retry-After": "5"} if exc.retryable else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(422, "validation_error", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "not_found" if exc.status_code == 404 else "error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, ImagingErrorCode.INTERNAL_ERROR.value, "internal error at this trust")

    @app.get("/health", response_model=Health, openapi_extra=disclosure("none"))
    async def health() -> Health:
        """Liveness, and whether the PACS and the data-access-api answer (no key needed, nothing disclosed)."""
        try:
            await service.importer.pacs.echo_async()
            pacs = ServiceState.HEALTHY
        except PacsError:
            pacs = ServiceState.DOWN
        data_access = ServiceState.HEALTHY if await service.cohorts.healthy() else ServiceState.DOWN
        ok = pacs is ServiceState.HEALTHY and data_access is ServiceState.HEALTHY
        return Health(
            status=ServiceState.HEALTHY if ok else ServiceState.DEGRADED,
            version=__version__,
            pacs=pacs,
            data_access=data_access,
        )

    @app.post("/imaging/import", **gated)
    async def start_import(body: CreateImagingPayload) -> ImagingStatus:
        """Import the studies of an approved project's frozen cohort (idempotent); its status comes back."""
        return await service.create(body)

    @app.post("/imaging/status", **gated)
    async def import_status(body: ImagingProjectPayload) -> ImagingStatus:
        """Where the project's import stands, in gated counts."""
        return await service.status(body.project_id, body.min_k)

    @app.post("/imaging/reimport", **gated)
    async def reimport(body: ImagingProjectPayload) -> ImagingStatus:
        """Queue the project's FAILED studies again."""
        return await service.reimport(body.project_id, body.min_k)

    @app.post("/imaging/delete", **gated)
    async def delete(body: ImagingProjectPayload) -> ImagingStatus:
        """Remove every image of the project at this trust (idempotent)."""
        return await service.delete(body.project_id, body.min_k)

    @app.get(
        "/imaging/projects/{project_id}/studies/{accession}/{kind}",
        response_model=FilesOut,
        dependencies=[TrainerOrInternal],
        openapi_extra=disclosure("row-level"),
    )
    async def study_files(project_id: uuid.UUID, accession: str, kind: Kind) -> FilesOut:
        """The files of one kind of a READY study, for this trust's FL trainers."""
        files = service.files(project_id, accession, kind)
        return FilesOut(
            kind=kind,
            files=[FileOut(name=f.name.split("/", 1)[1], bytes=f.bytes, sha256=f.sha256) for f in files],
        )

    @app.get(
        "/imaging/projects/{project_id}/studies/{accession}/{kind}/{name:path}",
        dependencies=[TrainerOrInternal],
        openapi_extra=disclosure("row-level"),
        response_model=None,
    )
    async def study_file(
        project_id: uuid.UUID,
        accession: str,
        kind: Kind,
        name: str,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        """One file of a READY study (``name`` as listed, e.g. ``<series>/<instance>.dcm``).

        Its ETag is its sha256, so a trainer's cached copy costs one round trip.
        """
        stored = service.file(project_id, accession, kind, name)
        etag = f'"{stored.sha256}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
            return Response(status_code=304, headers=headers)
        media = "application/dicom" if kind == "dicom" else "application/octet-stream"
        if name.endswith(".json"):
            media = "application/json"
        return FileResponse(stored.path, media_type=media, headers=headers, filename=name.rsplit("/", 1)[-1])

    return app
