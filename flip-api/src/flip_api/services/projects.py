"""Projects: who may see and change them, staging at trusts and the per-trust decisions.

Status changes go through the transition tables in :mod:`flip_api.services.project_states`; staging
preconditions through :mod:`flip_api.services.staging`.  Every state change appends exactly one audit
entry per action in the caller's transaction; callers commit.  Mutations lock the project row
(``SELECT ... FOR UPDATE``) so that concurrent requests on one project are serialised.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, delete, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict, Forbidden, NotFound, Unprocessable
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
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.project_states import ProjectEvent, decide_transition, transition
from flip_api.services.rbac import Principal
from flip_api.services.staging import check_staging
from flip_api.services.trusts import get_trust, has_trust_admins

SUBJECT = "project"
_NAME_INDEX = "uq_projects_name_live"


def _now() -> datetime:
    return datetime.now(UTC)


def _not_found() -> NotFound:
    return NotFound("project not found", code="project_not_found")


# --------------------------------------------------------------------------- access


async def _load(db: AsyncSession, project_id: uuid.UUID, *, lock: bool = False) -> Project:
    """A live (not deleted) project, optionally locked for the rest of the transaction."""
    stmt = select(Project).where(Project.id == project_id, Project.deleted_at.is_(None))
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    project = await db.scalar(stmt)
    if project is None:
        raise _not_found()
    return project


async def can_read(db: AsyncSession, principal: Principal, project: Project) -> bool:
    """Owner, member, project manager, or Trust Admin of a trust the project is staged at."""
    if project.owner_id == principal.id or principal.has(Perm.MANAGE_PROJECTS):
        return True
    member = await db.scalar(
        select(ProjectMember.user_id).where(
            ProjectMember.project_id == project.id, ProjectMember.user_id == principal.id
        )
    )
    if member is not None:
        return True
    admin_of = principal.trusts_with(Perm.APPROVE_FOR_TRUST)
    if not admin_of:
        return False
    staged = await db.scalar(
        select(ProjectTrust.trust_id).where(ProjectTrust.project_id == project.id, ProjectTrust.trust_id.in_(admin_of))
    )
    return staged is not None


def can_edit(principal: Principal, project: Project) -> bool:
    """Owner or project manager (whether the project's status allows edits is a separate question)."""
    return project.owner_id == principal.id or principal.has(Perm.MANAGE_PROJECTS)


async def get_project(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> Project:
    """A project the caller may read; 404 otherwise, so that existence does not leak."""
    project = await _load(db, project_id)
    if not await can_read(db, principal, project):
        raise _not_found()
    return project


async def _project_for_change(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> Project:
    """Lock a project the caller may edit: 404 if they cannot see it, 403 if they can only read it."""
    project = await _load(db, project_id, lock=True)
    if can_edit(principal, project):
        return project
    if await can_read(db, principal, project):
        raise Forbidden("only the project's owner or a project manager may change it", code="not_project_owner")
    raise _not_found()


async def decision_authority(db: AsyncSession, principal: Principal, trust_id: uuid.UUID) -> DecidedAs | None:
    """How the caller may decide for a trust: SITE (its Trust Admin), HUB (unmanaged trust), or None.

    A trust with any Trust Admin decides for itself; the hub decides only for trusts that have none.
    """
    if await has_trust_admins(db, trust_id):
        return DecidedAs.SITE if principal.has_at(Perm.APPROVE_FOR_TRUST, trust_id) else None
    return DecidedAs.HUB if principal.has(Perm.DECIDE_FOR_UNMANAGED_TRUSTS) else None


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


# --------------------------------------------------------------------------- create and edit


async def _require_unique_name(db: AsyncSession, name: str, *, exclude: uuid.UUID | None = None) -> None:
    stmt = select(Project.id).where(func.lower(Project.name) == name.lower(), Project.deleted_at.is_(None))
    if exclude is not None:
        stmt = stmt.where(Project.id != exclude)
    if await db.scalar(stmt) is not None:
        raise Conflict(f"a project named {name!r} already exists", code="duplicate_project_name")


async def _flush_checking_name(db: AsyncSession, name: str) -> None:
    # The pre-check gives a clean error; the unique index settles a race between two requests.
    try:
        await db.flush()
    except IntegrityError as exc:
        if _NAME_INDEX in str(exc.orig):
            raise Conflict(f"a project named {name!r} already exists", code="duplicate_project_name") from exc
        raise


async def _require_users(db: AsyncSession, user_ids: Sequence[uuid.UUID]) -> None:
    if not user_ids:
        return
    known = set((await db.scalars(select(User.id).where(User.id.in_(user_ids)))).all())
    unknown = [str(uid) for uid in user_ids if uid not in known]
    if unknown:
        raise Unprocessable(f"no such user: {', '.join(unknown)}", code="unknown_user")


def _owner_is_not_a_member(project_owner: uuid.UUID, user_ids: Sequence[uuid.UUID]) -> None:
    if project_owner in user_ids:
        raise Unprocessable("the owner already has full access and cannot also be a member", code="owner_not_member")


async def create_project(
    db: AsyncSession,
    principal: Principal,
    *,
    name: str,
    description: str,
    has_imaging: bool,
    dicom_to_nifti: bool,
    member_ids: Sequence[uuid.UUID] = (),
) -> Project:
    """Create an UNSTAGED project owned by the caller; ``has_imaging``/``dicom_to_nifti`` are fixed for good."""
    if not principal.has(Perm.CREATE_PROJECTS):
        raise Forbidden(f"creating projects needs the {Perm.CREATE_PROJECTS.value} permission")
    if dicom_to_nifti and not has_imaging:
        raise Unprocessable("dicom_to_nifti needs has_imaging", code="nifti_without_imaging")
    members = list(dict.fromkeys(member_ids))
    _owner_is_not_a_member(principal.id, members)
    await _require_users(db, members)
    await _require_unique_name(db, name)
    project = Project(
        id=uuid.uuid4(),
        name=name,
        description=description,
        owner_id=principal.id,
        has_imaging=has_imaging,
        dicom_to_nifti=dicom_to_nifti,
        status=ProjectStatus.UNSTAGED,
    )
    db.add(project)
    await _flush_checking_name(db, name)
    db.add_all(ProjectMember(project_id=project.id, user_id=uid) for uid in members)
    await db.flush()
    await audit.record(
        db,
        Actor.user(principal.id),
        "project.created",
        SUBJECT,
        project.id,
        {
            "name": name,
            "has_imaging": has_imaging,
            "dicom_to_nifti": dicom_to_nifti,
            "member_ids": [str(m) for m in members],
        },
    )
    return project


async def update_project(
    db: AsyncSession,
    principal: Principal,
    project_id: uuid.UUID,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Project:
    """Change name and/or description (None leaves a field as it is); only while UNSTAGED."""
    project = await _project_for_change(db, principal, project_id)
    transition(project.status, ProjectEvent.EDIT)
    changes: dict[str, Any] = {}
    if name is not None and name != project.name:
        await _require_unique_name(db, name, exclude=project.id)
        changes["name"] = {"from": project.name, "to": name}
        project.name = name
    if description is not None and description != project.description:
        changes["description"] = {"length": len(description)}
        project.description = description
    if changes:
        await _flush_checking_name(db, project.name)
        await audit.record(db, Actor.user(principal.id), "project.updated", SUBJECT, project.id, changes)
    return project


async def delete_project(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> None:
    """Soft-delete: the project disappears for everyone and its name becomes free again."""
    project = await _load(db, project_id, lock=True)
    if project.owner_id != principal.id and not principal.has(Perm.DELETE_ANY_PROJECT):
        if await can_read(db, principal, project):
            raise Forbidden("only the owner or a hub administrator may delete this project", code="not_project_owner")
        raise _not_found()
    project.deleted_at = _now()
    await db.flush()
    await audit.record(
        db,
        Actor.user(principal.id),
        "project.deleted",
        SUBJECT,
        project.id,
        {"name": project.name, "status": project.status.value},
    )


# --------------------------------------------------------------------------- members


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


async def add_member(db: AsyncSession, principal: Principal, project_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Add a member; returns False (and records nothing) if they already were one."""
    project = await _project_for_change(db, principal, project_id)
    transition(project.status, ProjectEvent.EDIT)
    _owner_is_not_a_member(project.owner_id, [user_id])
    await _require_users(db, [user_id])
    existing = await db.get(ProjectMember, (project.id, user_id))
    if existing is not None:
        return False
    db.add(ProjectMember(project_id=project.id, user_id=user_id))
    await db.flush()
    await audit.record(
        db, Actor.user(principal.id), "project.member_added", SUBJECT, project.id, {"user_id": str(user_id)}
    )
    return True


async def remove_member(db: AsyncSession, principal: Principal, project_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Remove a member (404 if they are not one; the owner never is)."""
    project = await _project_for_change(db, principal, project_id)
    transition(project.status, ProjectEvent.EDIT)
    existing = await db.get(ProjectMember, (project.id, user_id))
    if existing is None:
        raise NotFound("that user is not a member of this project (the owner cannot be removed)", code="not_a_member")
    await db.delete(existing)
    await db.flush()
    await audit.record(
        db, Actor.user(principal.id), "project.member_removed", SUBJECT, project.id, {"user_id": str(user_id)}
    )


# --------------------------------------------------------------------------- staging


async def stage_project(
    db: AsyncSession, principal: Principal, project_id: uuid.UUID, trust_ids: Sequence[uuid.UUID]
) -> Project:
    """UNSTAGED → STAGED at the chosen trusts, each with a PENDING decision."""
    project = await _project_for_change(db, principal, project_id)
    new_status = transition(project.status, ProjectEvent.STAGE)
    if not trust_ids:
        raise Unprocessable("choose at least one trust", code="no_trusts")
    if len(set(trust_ids)) != len(trust_ids):
        raise Unprocessable("each trust may be chosen only once", code="duplicate_trust")
    known = set((await db.scalars(select(Trust.id).where(Trust.id.in_(trust_ids)))).all())
    unknown = [str(tid) for tid in trust_ids if tid not in known]
    if unknown:
        raise Unprocessable(f"no such trust: {', '.join(unknown)}", code="unknown_trust")
    await check_staging(db, project, trust_ids)
    now = _now()
    db.add_all(
        ProjectTrust(project_id=project.id, trust_id=tid, decision=TrustDecision.PENDING, staged_at=now)
        for tid in trust_ids
    )
    project.status = new_status
    project.staged_at = now
    await db.flush()
    await audit.record(
        db,
        Actor.user(principal.id),
        "project.staged",
        SUBJECT,
        project.id,
        {"trust_ids": [str(t) for t in trust_ids]},
    )
    return project


async def unstage_project(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> Project:
    """STAGED → UNSTAGED (hub administrators only): the per-trust decisions are discarded."""
    if not principal.has(Perm.UNSTAGE_PROJECTS):
        raise Forbidden(f"unstaging needs the {Perm.UNSTAGE_PROJECTS.value} permission")
    project = await _load(db, project_id, lock=True)
    new_status = transition(project.status, ProjectEvent.UNSTAGE)
    removed = (
        await db.scalars(
            delete(ProjectTrust).where(ProjectTrust.project_id == project.id).returning(ProjectTrust.trust_id)
        )
    ).all()
    project.status = new_status
    project.staged_at = None
    await db.flush()
    await audit.record(
        db,
        Actor.user(principal.id),
        "project.unstaged",
        SUBJECT,
        project.id,
        {"trust_ids": sorted(str(t) for t in removed)},
    )
    return project


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class DecisionOutcome:
    """The project and the trust's row after a decision; ``changed`` is False for an idempotent repeat."""

    project: Project
    row: ProjectTrust
    changed: bool


async def on_trust_approved(db: AsyncSession, project: Project, trust: Trust, *, actor: Actor) -> None:
    """Called once for every trust approval, the first (which approves the project) and each later joiner.

    This is where a trust's participation begins. It records ``project.trust_joined`` now; the cohort and
    imaging work extends it to enqueue the trust's ``persist_cohort`` task and, for imaging projects, its
    ``create_imaging`` task, in the same transaction as the decision.
    """
    await audit.record(
        db,
        actor,
        "project.trust_joined",
        SUBJECT,
        project.id,
        {"trust_id": str(trust.id), "trust_code": trust.code, "has_imaging": project.has_imaging},
    )


async def decide(
    db: AsyncSession,
    principal: Principal,
    project_id: uuid.UUID,
    trust_id: uuid.UUID,
    decision: TrustDecision,
) -> DecisionOutcome:
    """Record a trust's final decision; the first approval approves the project, later ones join it."""
    project = await _load(db, project_id, lock=True)
    row = await db.scalar(
        select(ProjectTrust)
        .where(ProjectTrust.project_id == project.id, ProjectTrust.trust_id == trust_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    authority = await decision_authority(db, principal, trust_id)
    # A trust's decision makers see the project through the trust; anyone else needs read access.
    if not (authority is not None and row is not None) and not await can_read(db, principal, project):
        raise _not_found()
    approved = decision is TrustDecision.APPROVED
    new_status = transition(project.status, ProjectEvent.TRUST_APPROVED if approved else ProjectEvent.TRUST_DECLINED)
    if row is None:
        raise NotFound("the project is not staged at this trust", code="trust_not_staged")
    if authority is None:
        raise Forbidden("you cannot decide for this trust", code="not_trust_authority")
    if row.decision is decision:
        return DecisionOutcome(project, row, changed=False)
    row.decision = decide_transition(row.decision, decision)
    row.decided_by = principal.id
    row.decided_at = _now()
    row.decided_as = authority
    actor = Actor.user(principal.id)
    approves_project = new_status is not project.status
    if approves_project:
        project.status = new_status
        project.approved_at = row.decided_at
    await db.flush()
    details = {"trust_id": str(trust_id), "decided_as": authority.value}
    await audit.record(
        db, actor, "project.trust_approved" if approved else "project.trust_declined", SUBJECT, project.id, details
    )
    if approves_project:
        await audit.record(db, actor, "project.approved", SUBJECT, project.id, {"first_trust_id": str(trust_id)})
    if approved:
        await on_trust_approved(db, project, await get_trust(db, trust_id), actor=actor)
    return DecisionOutcome(project, row, changed=True)


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
