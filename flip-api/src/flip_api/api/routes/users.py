"""Users: the signed-in user's own account, and user administration."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import EmailStr
from sqlalchemy import func, or_, select

from flip_api.api.deps import AdminUsers, CurrentUser, HubDep, PageDep, SessionDep
from flip_api.core.errors import NotAuthenticated, NotFound
from flip_api.core.permissions import ROLES
from flip_api.core.security import hash_password, verify_password
from flip_api.db.models import User
from flip_api.schemas.common import Page
from flip_api.schemas.users import (
    GrantOut,
    MeOut,
    PasswordChange,
    ProfileUpdate,
    RoleOut,
    RolesIn,
    UserCreate,
    UserCreated,
    UserLookupOut,
    UserOut,
    UserUpdate,
)
from flip_api.services import audit, users
from flip_api.services.audit import Actor
from flip_api.services.rbac import Principal, load_principal

router = APIRouter(tags=["users"])


def _user_fields(user: User, principal: Principal) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "organisation": user.organisation,
        "enabled": user.enabled,
        "mfa_enabled": user.totp_enabled_at is not None,
        "created_at": user.created_at,
        "roles": [GrantOut(role=g.role, trust_id=g.trust_id) for g in principal.grants],
    }


async def user_out(db: SessionDep, user: User) -> UserOut:
    return UserOut(**_user_fields(user, await load_principal(db, user, None)))


@router.get("/users/me", response_model=MeOut)
async def me(user: CurrentUser) -> MeOut:
    """The signed-in user, their role grants and effective permissions (drives UI gating)."""
    return MeOut(**_user_fields(user.user, user), permissions=user.all_permissions)


@router.patch("/users/me", response_model=UserOut)
async def update_me(body: ProfileUpdate, user: CurrentUser, db: SessionDep) -> UserOut:
    """Change your own name or organisation."""
    target = await users.get_user(db, user.id)
    changes = body.model_dump(exclude_none=True)
    for key, value in changes.items():
        setattr(target, key, value)
    if changes:
        await audit.record(
            db, Actor.user(user.id), "user.profile_updated", "user", user.id, {"fields": sorted(changes)}
        )
    await db.commit()
    return await user_out(db, target)


@router.post("/users/me/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(body: PasswordChange, user: CurrentUser, db: SessionDep) -> Response:
    """Change your password; every session of yours, this one included, is signed out."""
    target = await users.get_user(db, user.id)
    if not verify_password(body.current_password, target.password_hash):
        raise NotAuthenticated("current password is incorrect", code="invalid_credentials")
    users.check_password_strength(body.new_password)
    target.password_hash = hash_password(body.new_password)
    await users.revoke_sessions(db, user.id, "password_changed")
    await audit.record(db, Actor.user(user.id), "user.password_changed", "user", user.id, {})
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/users/lookup", response_model=UserLookupOut)
async def lookup(email: Annotated[EmailStr, Query()], user: CurrentUser, hub: HubDep, db: SessionDep) -> UserLookupOut:
    """Find a user by exact email (to add project members). Rate limited per caller."""
    hub.limiter.check("user-lookup", str(user.id), hub.settings.rate_limit_user_lookup_per_min)
    found = await users.find_by_email(db, str(email))
    if found is None or not found.enabled:
        raise NotFound("no enabled user with that email", code="user_not_found")
    return UserLookupOut(id=found.id, email=found.email, name=found.name)


@router.get("/users", response_model=Page[UserOut])
async def list_users(
    admin: AdminUsers,
    db: SessionDep,
    page: PageDep,
    q: Annotated[str | None, Query(max_length=200, description="substring of email or name")] = None,
) -> Page[UserOut]:
    """All users, newest first (user administrators only)."""
    query = select(User)
    if q:
        like = f"%{q.lower()}%"
        query = query.where(or_(func.lower(User.email).like(like), func.lower(User.name).like(like)))
    total = await db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = (
        await db.scalars(query.order_by(User.created_at.desc(), User.id).offset(page.offset).limit(page.page_size))
    ).all()
    return Page(items=[await user_out(db, u) for u in rows], total=total, page=page.page, page_size=page.page_size)


@router.post("/users", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, admin: AdminUsers, db: SessionDep) -> UserCreated:
    """Create a user with global roles; the initial password is returned once."""
    user, password = await users.create_user(
        db,
        Actor.user(admin.id),
        email=str(body.email),
        name=body.name,
        organisation=body.organisation,
        roles=body.roles,
    )
    await db.commit()
    return UserCreated(user=await user_out(db, user), initial_password=password)


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: uuid.UUID, admin: AdminUsers, db: SessionDep) -> UserOut:
    return await user_out(db, await users.get_user(db, user_id))


@router.patch("/users/{user_id}", response_model=UserOut)
async def update_user(user_id: uuid.UUID, body: UserUpdate, admin: AdminUsers, db: SessionDep) -> UserOut:
    """Edit a user's profile or enable/disable them (disabling signs them out everywhere)."""
    target = await users.get_user(db, user_id)
    changes = body.model_dump(exclude_none=True)
    if changes.get("enabled") is False and target.enabled:
        await users.ensure_not_last_admin(db, target)
    for key, value in changes.items():
        setattr(target, key, value)
    if changes.get("enabled") is False:
        await users.revoke_sessions(db, target.id, "disabled")
    if changes:
        await audit.record(
            db, Actor.user(admin.id), "user.updated", "user", target.id, {k: v for k, v in changes.items()}
        )
    await db.commit()
    return await user_out(db, target)


@router.put("/users/{user_id}/roles", response_model=UserOut)
async def set_roles(user_id: uuid.UUID, body: RolesIn, admin: AdminUsers, db: SessionDep) -> UserOut:
    """Replace a user's global roles (Trust Admin is granted per trust under /trusts/{id}/admins)."""
    target = await users.get_user(db, user_id)
    await users.set_global_roles(db, Actor.user(admin.id), target, body.roles)
    await db.commit()
    return await user_out(db, target)


@router.post("/users/{user_id}/mfa/reset", response_model=UserOut)
async def reset_mfa(user_id: uuid.UUID, admin: AdminUsers, db: SessionDep) -> UserOut:
    """Clear a user's TOTP enrolment and sign them out; they enrol again at next sign-in."""
    target = await users.get_user(db, user_id)
    target.totp_secret_enc = None
    target.totp_enabled_at = None
    target.totp_last_step = None
    await users.revoke_sessions(db, target.id, "mfa_reset")
    await audit.record(db, Actor.user(admin.id), "user.mfa_reset", "user", target.id, {})
    await db.commit()
    return await user_out(db, target)


@router.post("/users/{user_id}/sessions/revoke", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_user_sessions(user_id: uuid.UUID, admin: AdminUsers, db: SessionDep) -> Response:
    """Sign a user out everywhere (all access and refresh tokens stop working)."""
    target = await users.get_user(db, user_id)
    count = await users.revoke_sessions(db, target.id, "admin_revoked")
    await audit.record(db, Actor.user(admin.id), "user.sessions_revoked", "user", target.id, {"sessions": count})
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/roles", response_model=list[RoleOut])
async def list_roles(user: CurrentUser) -> list[RoleOut]:
    """The seeded roles and what each grants."""
    return [
        RoleOut(
            name=spec.name,
            description=spec.description,
            trust_scoped=spec.trust_scoped,
            permissions=sorted(p.value for p in spec.permissions),
        )
        for spec in ROLES.values()
    ]
