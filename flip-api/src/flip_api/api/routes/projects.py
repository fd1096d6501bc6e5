"""Projects: CRUD, members, staging at trusts and per-trust decisions (plus a trust's own decision list)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from flip_api.api.deps import CurrentUser, HubDep, PageDep, SessionDep
from flip_api.db.models import Project, ProjectStatus, TrustDecision
from flip_api.schemas.common import Page
from flip_api.schemas.projects import (
    DecisionIn,
    DecisionOut,
    MemberIn,
    MemberOut,
    ProjectCreate,
    ProjectOut,
    ProjectTrustOut,
    ProjectUpdate,
    StageIn,
    TrustInboxOut,
)
from flip_api.services import project_access, project_views, projects

router = APIRouter(tags=["projects"])


async def _out(db: SessionDep, project: Project) -> ProjectOut:
    return ProjectOut.of(await project_views.project_view(db, project))


@router.get("/projects", response_model=Page[ProjectOut])
async def list_projects(
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    q: Annotated[str | None, Query(max_length=200, description="text in the name or description")] = None,
    status: Annotated[ProjectStatus | None, Query(description="only projects in this status")] = None,
    mine: Annotated[bool, Query(description="only projects I own or am a member of")] = False,
) -> Page[ProjectOut]:
    """Projects the caller may read, newest first."""
    found, total = await project_views.list_projects(
        db, user, offset=page.offset, limit=page.page_size, q=q, status=status, mine=mine
    )
    views = await project_views.project_views(db, found)
    return Page(items=[ProjectOut.of(v) for v in views], total=total, page=page.page, page_size=page.page_size)


@router.post("/projects", response_model=ProjectOut, status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectCreate, user: CurrentUser, db: SessionDep) -> ProjectOut:
    """Create a project owned by the caller (needs CAN_CREATE_PROJECTS)."""
    project = await projects.create_project(
        db,
        user,
        name=body.name,
        description=body.description,
        has_imaging=body.has_imaging,
        dicom_to_nifti=body.dicom_to_nifti,
        member_ids=body.member_ids,
    )
    await db.commit()
    return await _out(db, project)


@router.get("/projects/{project_id}", response_model=ProjectOut)
async def get_project(project_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> ProjectOut:
    """One project, with its members and per-trust decisions."""
    return await _out(db, await project_access.get_project(db, user, project_id))


@router.patch("/projects/{project_id}", response_model=ProjectOut)
async def update_project(project_id: uuid.UUID, body: ProjectUpdate, user: CurrentUser, db: SessionDep) -> ProjectOut:
    """Rename or re-describe an UNSTAGED project (owner or project manager)."""
    project = await projects.update_project(db, user, project_id, name=body.name, description=body.description)
    await db.commit()
    return await _out(db, project)


@router.delete("/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: uuid.UUID, user: CurrentUser, hub: HubDep, db: SessionDep) -> Response:
    """Soft-delete a project (owner or CAN_DELETE_ANY_PROJECT); approved trusts delete its images."""
    await projects.delete_project(db, hub, user, project_id)
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/projects/{project_id}/members", response_model=list[MemberOut])
async def list_members(project_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> list[MemberOut]:
    """The project's members (the owner is listed on the project, not here)."""
    return [MemberOut.model_validate(m) for m in await project_views.list_members(db, user, project_id)]


@router.post("/projects/{project_id}/members", response_model=list[MemberOut])
async def add_member(project_id: uuid.UUID, body: MemberIn, user: CurrentUser, db: SessionDep) -> list[MemberOut]:
    """Add a member (idempotent); answers with the members after the change."""
    await projects.add_member(db, user, project_id, body.user_id)
    await db.commit()
    return [MemberOut.model_validate(m) for m in await project_views.list_members(db, user, project_id)]


@router.delete("/projects/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(project_id: uuid.UUID, user_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> Response:
    """Remove a member of an UNSTAGED project."""
    await projects.remove_member(db, user, project_id, user_id)
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/projects/{project_id}/stage", response_model=ProjectOut)
async def stage_project(project_id: uuid.UUID, body: StageIn, user: CurrentUser, db: SessionDep) -> ProjectOut:
    """Stage the project at the chosen trusts; each trust then approves or declines."""
    project = await projects.stage_project(db, user, project_id, body.trust_ids)
    await db.commit()
    return await _out(db, project)


@router.post("/projects/{project_id}/unstage", response_model=ProjectOut)
async def unstage_project(project_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> ProjectOut:
    """Return a STAGED project to UNSTAGED, discarding its trust decisions (needs CAN_UNSTAGE_PROJECTS)."""
    project = await projects.unstage_project(db, user, project_id)
    await db.commit()
    return await _out(db, project)


@router.get("/projects/{project_id}/trusts", response_model=list[ProjectTrustOut])
async def list_project_trusts(project_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> list[ProjectTrustOut]:
    """The trusts the project is staged at, their decisions, and who decides for each."""
    return [ProjectTrustOut.model_validate(t) for t in await project_views.trust_decisions(db, user, project_id)]


@router.post("/projects/{project_id}/trusts/{trust_id}/decision", response_model=DecisionOut)
async def decide(
    project_id: uuid.UUID, trust_id: uuid.UUID, body: DecisionIn, user: CurrentUser, hub: HubDep, db: SessionDep
) -> DecisionOut:
    """Approve or decline for one trust: its Trust Admins decide, or the hub when it has none. Final.

    An approval also asks the trust to freeze its cohort (a ``persist_cohort`` task).
    """
    outcome = await projects.decide(db, hub, user, project_id, trust_id, TrustDecision(body.decision))
    await db.commit()
    return DecisionOut.of(outcome)


@router.get("/trusts/{trust_id}/decisions", response_model=Page[TrustInboxOut])
async def trust_decisions(
    trust_id: uuid.UUID,
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    decision: Annotated[TrustDecision | None, Query(description="only projects with this decision")] = None,
) -> Page[TrustInboxOut]:
    """Projects staged at a trust, pending first: the trust's decision list."""
    items, total = await project_views.trust_inbox(
        db, user, trust_id, offset=page.offset, limit=page.page_size, decision=decision
    )
    return Page(
        items=[TrustInboxOut.model_validate(i) for i in items], total=total, page=page.page, page_size=page.page_size
    )
