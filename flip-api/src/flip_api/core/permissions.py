"""The permission catalogue and the seeded roles: the single source of truth for RBAC.

Global permissions are satisfied only by global grants (``user_roles.trust_id IS NULL``); trust-scoped
permissions only by a grant at that very trust.  The Admin role holds every global permission and no
trust-scoped one, so hub administration never implies authority over a hospital's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Perm(StrEnum):
    # global
    ACCESS_ADMIN_PANEL = "CAN_ACCESS_ADMIN_PANEL"
    CREATE_PROJECTS = "CAN_CREATE_PROJECTS"
    MANAGE_PROJECTS = "CAN_MANAGE_PROJECTS"
    DELETE_ANY_PROJECT = "CAN_DELETE_ANY_PROJECT"
    UNSTAGE_PROJECTS = "CAN_UNSTAGE_PROJECTS"
    DECIDE_FOR_UNMANAGED_TRUSTS = "CAN_DECIDE_FOR_UNMANAGED_TRUSTS"
    MANAGE_USERS = "CAN_MANAGE_USERS"
    MANAGE_TRUSTS = "CAN_MANAGE_TRUSTS"
    VIEW_AUDIT = "CAN_VIEW_AUDIT"
    # trust-scoped
    APPROVE_FOR_TRUST = "CAN_APPROVE_FOR_TRUST"
    MANAGE_TRUST_GOVERNANCE = "CAN_MANAGE_TRUST_GOVERNANCE"


TRUST_SCOPED: frozenset[Perm] = frozenset({Perm.APPROVE_FOR_TRUST, Perm.MANAGE_TRUST_GOVERNANCE})
GLOBAL: frozenset[Perm] = frozenset(p for p in Perm if p not in TRUST_SCOPED)

PERMISSION_DESCRIPTIONS: dict[Perm, str] = {
    Perm.ACCESS_ADMIN_PANEL: "Open the admin area",
    Perm.CREATE_PROJECTS: "Create projects",
    Perm.MANAGE_PROJECTS: "Read and edit any project regardless of ownership or membership",
    Perm.DELETE_ANY_PROJECT: "Delete any project",
    Perm.UNSTAGE_PROJECTS: "Return a staged project to UNSTAGED",
    Perm.DECIDE_FOR_UNMANAGED_TRUSTS: "Approve or decline on behalf of trusts that have no Trust Admin",
    Perm.MANAGE_USERS: "Create, enable and disable users; assign roles; handle access requests",
    Perm.MANAGE_TRUSTS: "Register trusts, rotate their keys, appoint Trust Admins",
    Perm.VIEW_AUDIT: "Read, export and verify the audit log",
    Perm.APPROVE_FOR_TRUST: "Approve or decline projects staged at this trust",
    Perm.MANAGE_TRUST_GOVERNANCE: "Manage this trust's Trust Admins and governance settings",
}


class RoleName(StrEnum):
    ADMIN = "Admin"
    RESEARCHER = "Researcher"
    VIEWER = "Viewer"
    TRUST_ADMIN = "Trust Admin"


@dataclass(frozen=True)
class RoleSpec:
    name: RoleName
    description: str
    trust_scoped: bool
    permissions: frozenset[Perm]


ROLES: dict[RoleName, RoleSpec] = {
    RoleName.ADMIN: RoleSpec(RoleName.ADMIN, "Hub administrator", False, GLOBAL),
    RoleName.RESEARCHER: RoleSpec(
        RoleName.RESEARCHER, "Creates projects and models", False, frozenset({Perm.CREATE_PROJECTS})
    ),
    RoleName.VIEWER: RoleSpec(RoleName.VIEWER, "Reads projects they are a member of", False, frozenset()),
    RoleName.TRUST_ADMIN: RoleSpec(RoleName.TRUST_ADMIN, "Data owner at one trust: decides for it", True, TRUST_SCOPED),
}
