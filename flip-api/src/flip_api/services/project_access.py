"""Who may see or change a project, and who decides for a trust."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Forbidden, NotFound
from flip_api.core.permissions import Perm
from flip_api.db.models import (
    DecidedAs,
    Project,
    ProjectMember,
    ProjectTrust,
)
from flip_api.services.rbac import Principal
from flip_api.services.trusts import has_trust_admins


def project_not_found() -> NotFound:
    """The one answer for a project that does not exist or that the caller may not see."""
    return NotFound("project not found", code="project_not_found")


async def load_project(db: AsyncSession, project_id: uuid.UUID, *, lock: bool = False) -> Project:
    """A live (not deleted) project, optionally locked for the rest of the transaction."""
    stmt = select(Project).where(Project.id == project_id, Project.deleted_at.is_(None))
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    project = await db.scalar(stmt)
    if project is None:
        raise project_not_found()
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
    project = await load_project(db, project_id)
    if not await can_read(db, principal, project):
        raise project_not_found()
    return project


async def project_for_change(db: AsyncSession, principal: Principal, project_id: uuid.UUID) -> Project:
    """Lock a project the caller may edit: 404 if they cannot see it, 403 if they can only read it."""
    project = await load_project(db, project_id, lock=True)
    if can_edit(principal, project):
        return project
    if await can_read(db, principal, project):
        raise Forbidden("only the project's owner or a project manager may change it", code="not_project_owner")
    raise project_not_found()


async def decision_authority(db: AsyncSession, principal: Principal, trust_id: uuid.UUID) -> DecidedAs | None:
    """How the caller may decide for a trust: SITE (its Trust Admin), HUB (unmanaged trust), or None.

    A trust with any Trust Admin decides for itself; the hub decides only for trusts that have none.
    """
    if await has_trust_admins(db, trust_id):
        return DecidedAs.SITE if principal.has_at(Perm.APPROVE_FOR_TRUST, trust_id) else None
    return DecidedAs.HUB if principal.has(Perm.DECIDE_FOR_UNMANAGED_TRUSTS) else None
