"""Projects: creating and editing them, members, staging at trusts and the per-trust decisions.

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

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict, Forbidden, NotFound, Unprocessable
from flip_api.core.permissions import Perm
from flip_api.core.state import HubState
from flip_api.db.models import (
    Project,
    ProjectMember,
    ProjectStatus,
    ProjectTrust,
    Trust,
    TrustDecision,
    User,
)
from flip_api.services import audit, cohorts, imaging, models
from flip_api.services.audit import Actor
from flip_api.services.project_access import (
    can_read,
    decision_authority,
    load_project,
    project_for_change,
    project_not_found,
)
from flip_api.services.project_states import ProjectEvent, decide_transition, transition
from flip_api.services.rbac import Principal
from flip_api.services.staging import check_staging
from flip_api.services.trusts import get_trust

SUBJECT = "project"
_NAME_INDEX = "uq_projects_name_live"


def _now() -> datetime:
    return datetime.now(UTC)


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
    project = await project_for_change(db, principal, project_id)
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


async def delete_project(db: AsyncSession, hub: HubState, principal: Principal, project_id: uuid.UUID) -> None:
    """Soft-delete: the project disappears for everyone and its name becomes free again.

    Trusts stop working on it: unfinished cohort tasks and imaging tasks not started yet are cancelled,
    and every trust that approved an imaging project is asked to delete its images (``delete_imaging``).
    Its models are deleted too, and their training stopped.
    """
    project = await load_project(db, project_id, lock=True)
    if project.owner_id != principal.id and not principal.has(Perm.DELETE_ANY_PROJECT):
        if await can_read(db, principal, project):
            raise Forbidden("only the owner or a hub administrator may delete this project", code="not_project_owner")
        raise project_not_found()
    actor = Actor.user(principal.id)
    # Every task to cancel is locked before the first audit entry (see the lock order in services/cohorts.py).
    waiting_imaging = await imaging.lock_waiting_tasks(db, project.id) if project.has_imaging else []
    await cohorts.cancel_pending(db, project.id, actor, "the project was deleted")
    project.deleted_at = _now()
    await db.flush()
    await audit.record(
        db,
        actor,
        "project.deleted",
        SUBJECT,
        project.id,
        {"name": project.name, "status": project.status.value},
    )
    await imaging.delete_for_deleted_project(db, hub, project, waiting_imaging, actor=actor)
    await models.delete_for_deleted_project(db, project.id, actor=actor)


# --------------------------------------------------------------------------- members


async def add_member(db: AsyncSession, principal: Principal, project_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Add a member; returns False (and records nothing) if they already were one."""
    project = await project_for_change(db, principal, project_id)
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
    project = await project_for_change(db, principal, project_id)
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
    project = await project_for_change(db, principal, project_id)
    new_status = transition(project.status, ProjectEvent.STAGE)
    if len(set(trust_ids)) != len(trust_ids):
        raise Unprocessable("each trust may be chosen only once", code="duplicate_trust_id")
    # Every precondition (at least one trust, each registered, a usable cohort count at each) lives in
    # the staging registry, so that a refusal lists all problems at once.
    await check_staging(db, project, trust_ids)
    actor = Actor.user(principal.id)
    # Trusts left out have nothing more to answer (cancelled before this transaction's first audit entry;
    # see the lock order in services/cohorts.py).
    await cohorts.cancel_pending(db, project.id, actor, "the project was staged at other trusts", keep_trusts=trust_ids)
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
        actor,
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
    project = await load_project(db, project_id, lock=True)
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


async def on_trust_approved(db: AsyncSession, hub: HubState, project: Project, trust: Trust, *, actor: Actor) -> None:
    """Called once for every trust approval, the first (which approves the project) and each later joiner.

    This is where a trust's participation begins, in the same transaction as the decision: it records
    ``project.trust_joined``, asks the trust to freeze its cohort (``persist_cohort`` with the query of
    record) and, for an imaging project, to import its studies once the cohort is frozen
    (``create_imaging``, which depends on the freeze).
    """
    await audit.record(
        db,
        actor,
        "project.trust_joined",
        SUBJECT,
        project.id,
        {"trust_id": str(trust.id), "trust_code": trust.code, "has_imaging": project.has_imaging},
    )
    snapshot = await cohorts.request_snapshot(db, hub, project, trust, actor=actor)
    if project.has_imaging:
        await imaging.request_import(db, hub, project, trust, snapshot, actor=actor)


async def decide(
    db: AsyncSession,
    hub: HubState,
    principal: Principal,
    project_id: uuid.UUID,
    trust_id: uuid.UUID,
    decision: TrustDecision,
) -> DecisionOutcome:
    """Record a trust's final decision; the first approval approves the project, later ones join it."""
    project = await load_project(db, project_id, lock=True)
    row = await db.scalar(
        select(ProjectTrust)
        .where(ProjectTrust.project_id == project.id, ProjectTrust.trust_id == trust_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    authority = await decision_authority(db, principal, trust_id)
    # A trust's decision makers see the project through the trust; anyone else needs read access.
    if not (authority is not None and row is not None) and not await can_read(db, principal, project):
        raise project_not_found()
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
        await on_trust_approved(db, hub, project, await get_trust(db, trust_id), actor=actor)
    return DecisionOutcome(project, row, changed=True)
