"""Who may do what: seeding the role catalogue and resolving a user's effective permissions."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.permissions import PERMISSION_DESCRIPTIONS, ROLES, TRUST_SCOPED, Perm, RoleName
from flip_api.db.models import Permission, PermissionScope, Role, RolePermission, User, UserRole


async def seed_roles(session: AsyncSession) -> None:
    """Make the roles/permissions tables match the catalogue in code (idempotent, run at start)."""
    for perm in Perm:
        scope = PermissionScope.TRUST if perm in TRUST_SCOPED else PermissionScope.GLOBAL
        await session.execute(
            insert(Permission)
            .values(id=uuid.uuid4(), name=perm.value, description=PERMISSION_DESCRIPTIONS[perm], scope=scope)
            .on_conflict_do_update(
                index_elements=[Permission.name],
                set_={"description": PERMISSION_DESCRIPTIONS[perm], "scope": scope},
            )
        )
    for spec in ROLES.values():
        scope = PermissionScope.TRUST if spec.trust_scoped else PermissionScope.GLOBAL
        await session.execute(
            insert(Role)
            .values(id=uuid.uuid4(), name=spec.name.value, description=spec.description, scope=scope)
            .on_conflict_do_update(index_elements=[Role.name], set_={"description": spec.description, "scope": scope})
        )
    perm_ids = {p.name: p.id for p in (await session.scalars(select(Permission))).all()}
    roles = {r.name: r for r in (await session.scalars(select(Role))).all()}
    for spec in ROLES.values():
        role = roles[spec.name.value]
        await session.execute(delete(RolePermission).where(RolePermission.role_id == role.id))
        for perm in spec.permissions:
            session.add(RolePermission(role_id=role.id, permission_id=perm_ids[perm.value]))
    await session.flush()


async def role_by_name(session: AsyncSession, name: RoleName) -> Role:
    role = await session.scalar(select(Role).where(Role.name == name.value))
    if role is None:
        raise RuntimeError(f"role {name} is not seeded")
    return role


@dataclass(frozen=True)
class Grant:
    role: RoleName
    trust_id: uuid.UUID | None


@dataclass
class Principal:
    """A signed-in user with their effective permissions, split into global and per-trust sets."""

    user: User
    session_id: uuid.UUID | None
    grants: list[Grant]
    global_perms: frozenset[Perm]
    trust_perms: dict[uuid.UUID, frozenset[Perm]] = field(default_factory=dict)

    @property
    def id(self) -> uuid.UUID:
        return self.user.id

    def has(self, perm: Perm) -> bool:
        """A global permission, held through a global grant (trust grants never count)."""
        if perm in TRUST_SCOPED:
            raise ValueError(f"{perm} is trust-scoped; use has_at()")
        return perm in self.global_perms

    def has_at(self, perm: Perm, trust_id: uuid.UUID) -> bool:
        """A trust-scoped permission, held through a grant at exactly that trust."""
        if perm not in TRUST_SCOPED:
            raise ValueError(f"{perm} is global; use has()")
        return perm in self.trust_perms.get(trust_id, frozenset())

    def trusts_with(self, perm: Perm) -> set[uuid.UUID]:
        return {tid for tid, perms in self.trust_perms.items() if perm in perms}

    @property
    def all_permissions(self) -> list[str]:
        names = {p.value for p in self.global_perms}
        names |= {p.value for perms in self.trust_perms.values() for p in perms}
        return sorted(names)


async def load_principal(session: AsyncSession, user: User, session_id: uuid.UUID | None) -> Principal:
    rows = (
        await session.execute(
            select(Role.name, UserRole.trust_id, Permission.name, Permission.scope)
            .select_from(UserRole)
            .join(Role, Role.id == UserRole.role_id)
            .outerjoin(RolePermission, RolePermission.role_id == Role.id)
            .outerjoin(Permission, Permission.id == RolePermission.permission_id)
            .where(UserRole.user_id == user.id)
        )
    ).all()
    grants: set[Grant] = set()
    global_perms: set[Perm] = set()
    trust_perms: dict[uuid.UUID, set[Perm]] = defaultdict(set)
    for role_name, trust_id, perm_name, perm_scope in rows:
        grants.add(Grant(RoleName(role_name), trust_id))
        if perm_name is None:
            continue
        perm = Perm(perm_name)
        # A permission counts only through a grant of its own scope.
        if trust_id is None and perm_scope is PermissionScope.GLOBAL:
            global_perms.add(perm)
        elif trust_id is not None and perm_scope is PermissionScope.TRUST:
            trust_perms[trust_id].add(perm)
    return Principal(
        user=user,
        session_id=session_id,
        grants=sorted(grants, key=lambda g: (g.role.value, str(g.trust_id))),
        global_perms=frozenset(global_perms),
        trust_perms={tid: frozenset(p) for tid, p in trust_perms.items()},
    )
