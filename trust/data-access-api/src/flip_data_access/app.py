"""The data-access-api's HTTP surface, inside the trust only (the agent and, later, FL trainers call it).

Every route but ``/health`` needs the trust's internal key.  The two row-level routes FL trainers read
(``/cohort/dataframe``, ``/cohort/accession-ids``) also accept the trainer key (``FLIP_TRAINER_KEY``),
which opens nothing else.  Every route declares what it lets out in
``openapi_extra[DISCLOSURE]``:

* ``gated`` — aggregates; every number in the response model is a :class:`~flip_core.cohort.GatedCount`
  made by the disclosure gate;
* ``row-level`` — rows of a frozen snapshot, for use inside the trust; refused below the threshold;
* ``none`` — no counts at all.

``tests/test_disclosure_routes.py`` enumerates the routes and fails if one is unmarked or bypasses the gate.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from flip_core.cohort import (
    MAX_K,
    CohortErrorCode,
    CohortQueryPayload,
    CohortSnapshotInfo,
    CohortStatistics,
    ColumnName,
    GatedCount,
    PersistCohortPayload,
)
from flip_core.contract import INTERNAL_KEY_HEADER, TRAINER_KEY_HEADER, ErrorBody, ServiceState
from flip_data_access import __version__
from flip_data_access.omop import CohortError
from flip_data_access.service import CohortService

log = logging.getLogger(__name__)

DISCLOSURE = "x-flip-disclosure"
Disclosure = Literal["gated", "row-level", "none"]


def disclosure(kind: Disclosure) -> dict[str, Any]:
    return {DISCLOSURE: kind}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


Accession = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class DataframeRequest(_Request):
    project_id: uuid.UUID
    columns: list[ColumnName] | None = Field(None, max_length=200, description="all columns when omitted")


class DataframeResponse(BaseModel):
    project_id: uuid.UUID
    columns: dict[str, list[Any]]


class AccessionIdsRequest(_Request):
    project_id: uuid.UUID


class AccessionIdsResponse(BaseModel):
    project_id: uuid.UUID
    accession_ids: list[str]


class StudyCountsRequest(_Request):
    project_id: uuid.UUID
    groups: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], list[Accession]] = Field(
        max_length=32, description="label (e.g. a study state) → accession ids in it"
    )
    min_k: int | None = Field(None, ge=1, le=MAX_K)


class StudyCountsResponse(BaseModel):
    project_id: uuid.UUID
    k: int
    counts: dict[str, GatedCount]


class Health(BaseModel):
    status: ServiceState
    version: str
    omop: ServiceState


"""Header of the trainer key: the trust's FL trainers' key, good for the row-level read routes only."""

_key_header = APIKeyHeader(name=INTERNAL_KEY_HEADER, auto_error=False, description="the trust's internal key")
PresentedKey = Annotated[str | None, Depends(_key_header)]
_trainer_header = APIKeyHeader(
    name=TRAINER_KEY_HEADER, auto_error=False, description="the trust's trainer key (row-level reads only)"
)
PresentedTrainerKey = Annotated[str | None, Depends(_trainer_header)]


def _same_key(presented: str | None, expected: str | None) -> bool:
    """Constant-time comparison; a key that is missing or not configured never matches."""
    if not presented or not expected:
        return False
    return secrets.compare_digest(presented.encode(), expected.encode())


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=detail, code=code).model_dump(), status_code=status, headers=headers)


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def create_app(service: CohortService, internal_key: str, trainer_key: str | None = None) -> FastAPI:
    """The application around one trust's :class:`CohortService`.

    ``trainer_key``: when given, it is accepted (besides the internal key) on the routes FL trainers read.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.db.open()
        try:
            yield
        finally:
            await service.db.close()

    app = FastAPI(title="FLIP data-access-api", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    async def internal_caller(key: PresentedKey) -> None:
        if not _same_key(key, internal_key):
            raise CohortError(CohortErrorCode.INTERNAL_ERROR, "internal key missing or wrong", status=401)

    async def trainer_or_internal_caller(key: PresentedKey, trainer: PresentedTrainerKey) -> None:
        if not (_same_key(key, internal_key) or _same_key(trainer, trainer_key)):
            raise CohortError(CohortErrorCode.INTERNAL_ERROR, "internal or trainer key missing or wrong", status=401)

    Internal = Depends(internal_caller)
    TrainerOrInternal = Depends(trainer_or_internal_caller)

    @app.exception_handler(CohortError)
    async def _cohort_error(_: Request, exc: CohortError) -> JSONResponse:
        code = "not_authenticated" if exc.status == 401 else exc.code.value
        headers = {"Retry-After": "5"} if exc.retryable else None
        return _error(exc.status, code, exc.detail, headers)

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
        return _error(500, CohortErrorCode.INTERNAL_ERROR.value, "internal error at this trust")

    @app.get("/health", response_model=Health, openapi_extra=disclosure("none"))
    async def health() -> Health:
        """Liveness, and whether the OMOP database answers (no key needed, nothing disclosed)."""
        try:
            await service.db.ping()
            omop = ServiceState.HEALTHY
        except CohortError:
            omop = ServiceState.DOWN
        status = ServiceState.HEALTHY if omop is ServiceState.HEALTHY else ServiceState.DEGRADED
        return Health(status=status, version=__version__, omop=omop)

    @app.post(
        "/cohort/statistics",
        response_model=CohortStatistics,
        dependencies=[Internal],
        openapi_extra=disclosure("gated"),
    )
    async def statistics(body: CohortQueryPayload) -> CohortStatistics:
        """Gated aggregates of a cohort query (for the hub, through the agent)."""
        return await service.statistics(body)

    @app.post(
        "/cohort/snapshot",
        response_model=CohortSnapshotInfo,
        dependencies=[Internal],
        openapi_extra=disclosure("gated"),
    )
    async def snapshot(body: PersistCohortPayload) -> CohortSnapshotInfo:
        """Freeze an approved project's cohort (idempotent); gated counts and the digest come back."""
        return await service.freeze(body)

    @app.post(
        "/cohort/study-counts",
        response_model=StudyCountsResponse,
        dependencies=[Internal],
        openapi_extra=disclosure("gated"),
    )
    async def study_counts(body: StudyCountsRequest) -> StudyCountsResponse:
        """Gated counts of the persons behind groups of a frozen cohort's studies (imaging status)."""
        k, counts = service.study_counts(body.project_id, body.groups, body.min_k)
        return StudyCountsResponse(project_id=body.project_id, k=k, counts=counts)

    @app.post(
        "/cohort/dataframe",
        response_model=DataframeResponse,
        dependencies=[TrainerOrInternal],
        openapi_extra=disclosure("row-level"),
    )
    async def dataframe(body: DataframeRequest) -> DataframeResponse:
        """Rows of an approved project's frozen cohort, column by column (trust-internal use only)."""
        columns = service.dataframe(body.project_id, body.columns)
        safe = {name: [_json_safe(v) for v in values] for name, values in columns.items()}
        return DataframeResponse(project_id=body.project_id, columns=safe)

    @app.post(
        "/cohort/accession-ids",
        response_model=AccessionIdsResponse,
        dependencies=[TrainerOrInternal],
        openapi_extra=disclosure("row-level"),
    )
    async def accession_ids(body: AccessionIdsRequest) -> AccessionIdsResponse:
        """Accession ids of an approved project's frozen cohort (to import its imaging studies)."""
        return AccessionIdsResponse(project_id=body.project_id, accession_ids=service.accession_ids(body.project_id))

    return app
