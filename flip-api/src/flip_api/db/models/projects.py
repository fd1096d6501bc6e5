"""Projects, members and per-trust decisions."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, DateTime, Enum, ForeignKey, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from flip_api.db.models.base import Base, Timestamps, UuidPk


class ProjectStatus(StrEnum):
    UNSTAGED = "UNSTAGED"
    STAGED = "STAGED"
    APPROVED = "APPROVED"


class TrustDecision(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"


class DecidedAs(StrEnum):
    HUB = "HUB"
    SITE = "SITE"


class Project(UuidPk, Timestamps, Base):
    __tablename__ = "projects"
    __table_args__ = (
        Index(
            "uq_projects_name_live",
            func.lower(text("name")),
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    has_imaging: Mapped[bool] = mapped_column(Boolean)
    dicom_to_nifti: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[ProjectStatus] = mapped_column(
        Enum(ProjectStatus, name="project_status"), default=ProjectStatus.UNSTAGED
    )
    staged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProjectTrust(Base):
    """A trust at which a project is staged, with that trust's decision."""

    __tablename__ = "project_trusts"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    trust_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("trusts.id", ondelete="RESTRICT"), primary_key=True, index=True
    )
    decision: Mapped[TrustDecision] = mapped_column(
        Enum(TrustDecision, name="trust_decision"), default=TrustDecision.PENDING
    )
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_as: Mapped[DecidedAs | None] = mapped_column(Enum(DecidedAs, name="decided_as"))
    staged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
