"""SQLAlchemy models; importing this package registers every table on ``Base.metadata``."""

from flip_api.db.models.audit import AuditEntry
from flip_api.db.models.base import Base
from flip_api.db.models.cohorts import CohortQuery, CohortResult, CohortResultState, CohortSnapshot
from flip_api.db.models.fl import FlEvent, FlJob, FlNet, FlNetNode, FlResult, NetStatus
from flip_api.db.models.identity import (
    AccessRequest,
    AccessRequestStatus,
    AuthSession,
    Permission,
    PermissionScope,
    RefreshToken,
    Role,
    RolePermission,
    User,
    UserRole,
)
from flip_api.db.models.imaging import ImagingImport
from flip_api.db.models.models import (
    EDITABLE_MODEL_STATES,
    FileStatus,
    FlBackend,
    JobType,
    Model,
    ModelFile,
    ModelStatus,
)
from flip_api.db.models.projects import (
    DecidedAs,
    Project,
    ProjectMember,
    ProjectStatus,
    ProjectTrust,
    TrustDecision,
)
from flip_api.db.models.tasks import TrustTask
from flip_api.db.models.trusts import Trust, TrustPayloadKey

__all__ = [
    "EDITABLE_MODEL_STATES",
    "AccessRequest",
    "AccessRequestStatus",
    "AuditEntry",
    "AuthSession",
    "Base",
    "CohortQuery",
    "CohortResult",
    "CohortResultState",
    "CohortSnapshot",
    "DecidedAs",
    "FileStatus",
    "FlBackend",
    "FlEvent",
    "FlJob",
    "FlNet",
    "FlNetNode",
    "FlResult",
    "ImagingImport",
    "JobType",
    "Model",
    "ModelFile",
    "ModelStatus",
    "NetStatus",
    "Permission",
    "PermissionScope",
    "Project",
    "ProjectMember",
    "ProjectStatus",
    "ProjectTrust",
    "RefreshToken",
    "Role",
    "RolePermission",
    "Trust",
    "TrustDecision",
    "TrustPayloadKey",
    "TrustTask",
    "User",
    "UserRole",
]
