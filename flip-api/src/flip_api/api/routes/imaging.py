"""A project's imaging at the trusts that approved it: status per trust, re-import, delete.

Readers of the project may read the status; its editors (owner or CAN_MANAGE_PROJECTS) may ask for a
re-import or a deletion.  A project the caller may not read answers 404, as on every project route; a
project that does not use imaging answers 409 ``project_without_imaging``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, status

from flip_api.api.deps import CurrentUser, HubDep, SessionDep
from flip_api.schemas.imaging import MAX_TRUSTS, ImagingOut, ImagingTasksOut, ImagingTrustsIn
from flip_api.services import imaging, imaging_views

router = APIRouter(prefix="/projects/{project_id}", tags=["imaging"])


@router.get("/imaging", response_model=ImagingOut)
async def get_imaging(project_id: uuid.UUID, user: CurrentUser, hub: HubDep, db: SessionDep) -> ImagingOut:
    """Per approving trust: the latest gated status, its freshness, the last error and work still waiting."""
    view = await imaging_views.imaging_view(db, user, project_id, refresh_s=hub.settings.imaging_refresh_s)
    return ImagingOut.of(view)


@router.post("/imaging/reimport", response_model=ImagingTasksOut, status_code=status.HTTP_202_ACCEPTED)
async def reimport(
    project_id: uuid.UUID,
    user: CurrentUser,
    hub: HubDep,
    db: SessionDep,
    body: Annotated[ImagingTrustsIn | None, Body()] = None,
) -> ImagingTasksOut:
    """Ask approved trusts (default: all) to retry the studies that failed (one ``reimport_studies`` each)."""
    trust_ids = body.trust_ids if body is not None else None
    queued = await imaging.request_reimport(db, hub, user, project_id, trust_ids)
    await db.commit()
    return ImagingTasksOut.of(project_id, queued)


@router.delete("/imaging", response_model=ImagingTasksOut, status_code=status.HTTP_202_ACCEPTED)
async def delete_imaging(
    project_id: uuid.UUID,
    user: CurrentUser,
    hub: HubDep,
    db: SessionDep,
    trust_id: Annotated[
        list[uuid.UUID] | None,
        Query(max_length=MAX_TRUSTS, description="an approved trust (repeatable); default every approved trust"),
    ] = None,
) -> ImagingTasksOut:
    """Ask approved trusts (default: all) to delete the project's images (one ``delete_imaging`` each).

    Imaging tasks of the project still waiting at those trusts are cancelled first.
    """
    queued = await imaging.request_deletion(db, hub, user, project_id, trust_id or None)
    await db.commit()
    return ImagingTasksOut.of(project_id, queued)
