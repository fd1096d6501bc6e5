"""Read models of projects: full views, filtered lists and a trust's decision inbox."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, case, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Forbidden
from flip_api.core.permissions import Perm
from flip_api.db.models import (
    DecidedAs,
    Project,
    ProjectMember,
    ProjectStatus,
    ProjectTrust,
    Trust,
    TrustDecision,
    User,
)
from flip_api.services.project_access import decision_authority, get_project
from flip_api.services.rbac import Principal
from flip_api.services.trusts import get_trust, has_trust_admins

# --------------------------------------------------------------------------- views


@dataclass(frozen=True)
class TrustDecisionView:
    """One trust a project is staged at, its decision, and who decides for it."""

    trust_id: uuid.UUID
    trust_name: str
    trust_code: str
    staged_at: datetime
    decision: TrustDecision
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    decided_as: DecidedAs | None
    decides_as: DecidedAs


@dataclass(frozen=True)
class ProjectView:
    project: Project
    owner_email: str
    member_ids: list[uuid.UUID]
    trusts: list[TrustDecisionView]


@dataclass(frozen=True)
class MemberView:
    user_id: uuid.UUID
    email: str
    name: str
    added_at: datetime


class _DecidesAs:
    """Per-call cache of who decides for each trust (the answer cannot change within a request)."""

    def __init__(self, db: AsyncSession) -> None:
        self._db = db
        self._known: dict[uuid.UUID, DecidedAs] = {}

    async def __call__(self, trust_id: uuid.UUID) -> DecidedAs:
        if trust_id not in self._known:
            managed = await has_trust_admins(self._db, trust_id)
            self._known[trust_id] = DecidedAs.SITE if managed else DecidedAs.HUB
        return self._known[trust_id]


async def project_views(db: AsyncSession, projects: Sequence[Project]) -> list[ProjectView]:
    """Owner email, member ids and trust decisions for many projects, in a fixed number of queries."""
    if not projects:
        return []
    ids = [p.id for p in projects]
    owner_rows = await db.execute(select(User.id, User.email).where(User.id.in_({p.owner_id for p in projects})))
    owners = {uid: email for uid, email in owner_rows}
    members: dict[uuid.UUID, list[uuid.UUID]] = {pid: [] for pid in ids}
    for pid, uid in await db.execute(
        select(ProjectMember.project_id, ProjectMember.user_id)
        .where(ProjectMember.project_id.in_(ids))
        .order_by(ProjectMember.added_at, ProjectMember.user_id)
    ):
        members[pid].append(uid)
    decides_as = _DecidesAs(db)
    trusts: dict[uuid.UUID, list[TrustDecisionView]] = {pid: [] for pid in ids}
    rows = await db.execute(
        select(ProjectTrust, Trust.name, Trust.code)
        .join(Trust, Trust.id == ProjectTrust.trust_id)
        .where(ProjectTrust.project_id.in_(ids))
        .order_by(Trust.name)
    )
    for row, trust_name, trust_code in rows:
        trusts[row.project_id].append(
            TrustDecisionView(
                trust_id=row.trust_id,
                trust_name=trust_name,
                trust_code=trust_code,
                staged_at=row.staged_at,
                decision=row.decision,
                decided_by=row.decided_by,
                decided_at=row.decided_at,
                decided_as=row.decided_as,
                decides_as=await decides_as(row.trust_id),
            )
        )
    return [ProjectView(p, owners.get(p.owner_id, ""), members[p.id], trusts[p.id]) for p in projects]


async def project_view(db: AsyncSession, project: Project) -> ProjectView:
    """The full view of one project."""
    (view,) = await project_views(db, [project])
    return view


async def trust_decisions(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> list[TrustDecisionView]:
    """The per-trust decisions of a project the caller may read."""
    project = await get_project(db, principal, project_id)
    return (await project_view(db, project)).trusts


# --------------------------------------------------------------------------- lists


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _owned_or_member(principal: Principal) -> ColumnElement[bool]:
    is_member = exists().where(ProjectMember.project_id == Project.id, ProjectMember.user_id == principal.id)
    return or_(Project.owner_id == principal.id, is_member)


def _visible_to(principal: Principal) -> ColumnElement[bool]:
    clauses = [_owned_or_member(principal)]
    admin_of = principal.trusts_with(Perm.APPROVE_FOR_TRUST)
    if admin_of:
        clauses.append(
            exists().where(ProjectTrust.project_id == Project.id, ProjectTrust.trust_id.in_(admin_of)),
        )
    return or_(*clauses)


async def list_projects(
    db: AsyncSession,
    principal: Principal,
    *,
    offset: int,
    limit: int,
    q: str | None = None,
    status: ProjectStatus | None = None,
    mine: bool = False,
) -> tuple[list[Project], int]:
    """A page of the projects the caller may read (newest first) and the total matching.

    ``mine`` narrows to projects the caller owns or is a member of, whatever their other rights.
    """
    conditions: list[ColumnElement[bool]] = [Project.deleted_at.is_(None)]
    if mine:
        conditions.append(_owned_or_member(principal))
    elif not principal.has(Perm.MANAGE_PROJECTS):
        conditions.append(_visible_to(principal))
    if q:
        pattern = f"%{_escape_like(q)}%"
        conditions.append(
            or_(Project.name.ilike(pattern, escape="\\"), Project.description.ilike(pattern, escape="\\"))
        )
    if status is not None:
        conditions.append(Project.status == status)
    total = await db.scalar(select(func.count()).select_from(Project).where(*conditions)) or 0
    items = await db.scalars(
        select(Project).where(*conditions).order_by(Project.created_at.desc(), Project.id).offset(offset).limit(limit)
    )
    return list(items.all()), total


# --------------------------------------------------------------------------- a trust's view


@dataclass(frozen=True)
class TrustInboxItem:
    """A project staged at a trust, as that trust's decision makers see it."""

    project_id: uuid.UUID
    project_name: str
    description: str
    owner_email: str
    project_status: ProjectStatus
    has_imaging: bool
    staged_at: datetime
    decision: TrustDecision
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    decided_as: DecidedAs | None


async def trust_inbox(
    db: AsyncSession,
    principal: Principal,
    trust_id: uuid.UUID,
    *,
    offset: int,
    limit: int,
    decision: TrustDecision | None = None,
) -> tuple[list[TrustInboxItem], int]:
    """Projects staged at a trust, pending first (oldest first), then decided (newest first).

    Open to the trust's Trust Admins, or to the hub's deciders when the trust has none.
    """
    trust = await get_trust(db, trust_id)
    if await decision_authority(db, principal, trust.id) is None:
        raise Forbidden("you cannot see or make decisions for this trust", code="not_trust_authority")
    conditions: list[ColumnElement[bool]] = [ProjectTrust.trust_id == trust.id, Project.deleted_at.is_(None)]
    if decision is not None:
        conditions.append(ProjectTrust.decision == decision)
    base = select(Project, ProjectTrust, User.email).join(ProjectTrust, ProjectTrust.project_id == Project.id)
    base = base.join(User, User.id == Project.owner_id).where(*conditions)
    total = (
        await db.scalar(
            select(func.count())
            .select_from(ProjectTrust)
            .join(Project, Project.id == ProjectTrust.project_id)
            .where(*conditions)
        )
        or 0
    )
    pending_first = case((ProjectTrust.decision == TrustDecision.PENDING, 0), else_=1)
    rows = await db.execute(
        base.order_by(pending_first, ProjectTrust.decided_at.desc().nulls_last(), ProjectTrust.staged_at, Project.id)
        .offset(offset)
        .limit(limit)
    )
    items = [
        TrustInboxItem(
            project_id=project.id,
            project_name=project.name,
            description=project.description,
            owner_email=email,
            project_status=project.status,
            has_imaging=project.has_imaging,
            staged_at=row.staged_at,
            decision=row.decision,
            decided_by=row.decided_by,
            decided_at=row.decided_at,
            decided_as=row.decided_as,
        )
        for project, row, email in rows
    ]
    return items, total


async def list_members(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> list[MemberView]:
    """The members of a project the caller may read (the owner is not a member)."""
    project = await get_project(db, principal, project_id)
    rows = await db.execute(
        select(User.id, User.email, User.name, ProjectMember.added_at)
        .join(ProjectMember, ProjectMember.user_id == User.id)
        .where(ProjectMember.project_id == project.id)
        .order_by(User.email)
    )
    return [MemberView(uid, email, name, added_at) for uid, email, name, added_at in rows]
