"""User accounts, role grants and sessions (the built-in identity store)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import lazyload

from flip_api.core.errors import Conflict, NotFound, Unprocessable
from flip_api.core.permissions import ROLES, RoleName
from flip_api.core.security import hash_password, new_password
from flip_api.db.models import AuthSession, Trust, User, UserRole
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.rbac import role_by_name

MIN_PASSWORD_LENGTH = 12


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Unprocessable(f"password must be at least {MIN_PASSWORD_LENGTH} characters", code="weak_password")
    if len(password) > 256:
        raise Unprocessable("password must be at most 256 characters", code="weak_password")


async def get_user(db: AsyncSession, user_id: uuid.UUID) -> User:
    user = await db.get(User, user_id)
    if user is None:
        raise NotFound("user not found", code="user_not_found")
    return user


async def find_by_email(db: AsyncSession, email: str) -> User | None:
    return await db.scalar(select(User).where(func.lower(User.email) == normalise_email(email)))


async def create_user(
    db: AsyncSession,
    actor: Actor,
    *,
    email: str,
    name: str,
    organisation: str = "",
    roles: Sequence[RoleName] = (),
    password: str | None = None,
) -> tuple[User, str]:
    """Create a user with global roles; returns the user and the initial password (shown once)."""
    email = normalise_email(email)
    if await find_by_email(db, email) is not None:
        raise Conflict(f"a user with email {email} already exists", code="duplicate_email")
    initial = password if password is not None else new_password()
    if password is not None:
        check_password_strength(password)
    user = User(
        id=uuid.uuid4(),
        email=email,
        name=name,
        organisation=organisation,
        password_hash=hash_password(initial),
        enabled=True,
        failed_logins=0,
    )
    db.add(user)
    await db.flush()
    await audit.record(db, actor, "user.created", "user", user.id, {"email": email})
    await set_global_roles(db, actor, user, roles)
    return user, initial


async def set_global_roles(db: AsyncSession, actor: Actor, user: User, roles: Sequence[RoleName]) -> None:
    """Replace the user's global role grants (trust-scoped grants are managed per trust)."""
    wanted = set(roles)
    for role in wanted:
        if ROLES[role].trust_scoped:
            raise Unprocessable(f"{role.value} is granted per trust, through the trust's admins", code="trust_role")
    current = (await db.scalars(select(UserRole).where(UserRole.user_id == user.id, UserRole.trust_id.is_(None)))).all()
    have = {RoleName(g.role.name): g for g in current}
    if RoleName.ADMIN in have and RoleName.ADMIN not in wanted:
        await ensure_not_last_admin(db, user)
    for name, grant in have.items():
        if name not in wanted:
            await db.delete(grant)
    for name in wanted - set(have):
        role_row = await role_by_name(db, name)
        db.add(UserRole(id=uuid.uuid4(), user_id=user.id, role_id=role_row.id, trust_id=None))
    if wanted != set(have):
        await audit.record(db, actor, "user.roles_set", "user", user.id, {"roles": sorted(r.value for r in wanted)})
    await db.flush()


async def grant_trust_role(
    db: AsyncSession, actor: Actor, user: User, trust: Trust, role: RoleName = RoleName.TRUST_ADMIN
) -> bool:
    """Grant a trust-scoped role; returns False if the user already held it (idempotent)."""
    if not ROLES[role].trust_scoped:
        raise Unprocessable(f"{role.value} is a global role", code="global_role")
    role_row = await role_by_name(db, role)
    existing = await db.scalar(
        select(UserRole).where(
            UserRole.user_id == user.id, UserRole.role_id == role_row.id, UserRole.trust_id == trust.id
        )
    )
    if existing is not None:
        return False
    db.add(UserRole(id=uuid.uuid4(), user_id=user.id, role_id=role_row.id, trust_id=trust.id))
    await db.flush()
    await audit.record(db, actor, "trust.admin_added", "trust", trust.id, {"user_id": str(user.id), "role": role.value})
    return True


async def ensure_not_last_admin(db: AsyncSession, user: User) -> None:
    """Refuse a change that would leave the hub without an enabled Admin (409 ``last_admin``)."""
    admin_role = await role_by_name(db, RoleName.ADMIN)
    # Lock every Admin grant so that two concurrent demotions cannot both see "another admin left".
    grants = (
        await db.scalars(
            select(UserRole)
            .where(UserRole.role_id == admin_role.id, UserRole.trust_id.is_(None))
            .options(lazyload(UserRole.role))
            .with_for_update()
        )
    ).all()
    if all(g.user_id != user.id for g in grants):
        return
    others = [g.user_id for g in grants if g.user_id != user.id]
    enabled_others = (
        await db.scalar(select(func.count()).select_from(User).where(User.id.in_(others), User.enabled.is_(True)))
        if others
        else 0
    )
    if not enabled_others:
        raise Conflict("this would leave the hub without an enabled Admin; appoint another first", code="last_admin")


async def revoke_sessions(db: AsyncSession, user_id: uuid.UUID, reason: str) -> int:
    result = await db.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC), revoked_reason=reason)
    )
    return int(getattr(result, "rowcount", 0) or 0)
