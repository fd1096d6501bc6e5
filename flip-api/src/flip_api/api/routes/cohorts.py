"""A project's cohort query: save versions, pre-check, submit to every trust, read results and snapshots.

Readers of the project may read and pre-check; its editors may save and submit while it is UNSTAGED.
A project the caller may not read answers 404, as on every project route.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from flip_api.api.deps import CurrentUser, HubDep, SessionDep
from flip_api.schemas.cohorts import (
    PrecheckIn,
    PrecheckOut,
    QueryHistoryOut,
    QueryIn,
    ResultsOut,
    SavedQueryOut,
    SnapshotOut,
)
from flip_api.services import cohort_views, cohorts, project_access

router = APIRouter(prefix="/projects/{project_id}", tags=["cohorts"])


@router.put("/query", response_model=SavedQueryOut)
async def save_query(project_id: uuid.UUID, body: QueryIn, user: CurrentUser, db: SessionDep) -> SavedQueryOut:
    """Save a new version of the cohort query (editors, UNSTAGED only); the same SQL again changes nothing."""
    saved = await cohorts.save_query(db, user, project_id, name=body.name, sql=body.sql)
    await db.commit()
    return SavedQueryOut.of(saved)


@router.get("/query", response_model=QueryHistoryOut)
async def get_query(project_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> QueryHistoryOut:
    """The query of record and every saved version, newest first."""
    return QueryHistoryOut.of(await cohort_views.query_history(db, user, project_id))


@router.post("/query/precheck", response_model=PrecheckOut)
async def precheck_query(project_id: uuid.UUID, body: PrecheckIn, user: CurrentUser, db: SessionDep) -> PrecheckOut:
    """Check a query against the trusts' validator rules without saving or sending it."""
    await project_access.get_project(db, user, project_id)
    outcome = cohorts.precheck_sql(body.sql)
    return PrecheckOut(valid=outcome.valid, rule=outcome.rule, detail=outcome.detail)


@router.post("/query/submit", response_model=ResultsOut, status_code=status.HTTP_202_ACCEPTED)
async def submit_query(project_id: uuid.UUID, user: CurrentUser, hub: HubDep, db: SessionDep) -> ResultsOut:
    """Send the query of record to every registered trust; answers with its (queued) results."""
    query = await cohorts.submit_query(db, hub, user, project_id)
    await db.commit()
    return ResultsOut.of(await cohort_views.results(db, user, project_id, query.version))


@router.get("/query/results", response_model=ResultsOut)
async def query_results(
    project_id: uuid.UUID,
    user: CurrentUser,
    db: SessionDep,
    version: Annotated[int | None, Query(ge=1, description="a saved version; default the latest")] = None,
) -> ResultsOut:
    """Each trust's answer to one version of the query, with totals over the released counts."""
    return ResultsOut.of(await cohort_views.results(db, user, project_id, version))


@router.get("/snapshots", response_model=list[SnapshotOut])
async def list_snapshots(project_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> list[SnapshotOut]:
    """The cohort each approving trust froze (gated counts and a digest), or where its freeze stands."""
    return [SnapshotOut.model_validate(s) for s in await cohort_views.snapshots(db, user, project_id)]
