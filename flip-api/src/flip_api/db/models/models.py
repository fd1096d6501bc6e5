"""Models (an FL training definition under an approved project) and their uploaded files."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Enum, ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from flip_api.db.models.base import Base, Timestamps, UuidPk


class ModelStatus(StrEnum):
    """SPEC §3.2: PENDING → QUEUED → PREPARING → RUNNING → RESULTS_UPLOADED; failures ERROR, STOPPED,
    RESULTS_UPLOAD_FAILED."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    PREPARING = "PREPARING"
    RUNNING = "RUNNING"
    RESULTS_UPLOADED = "RESULTS_UPLOADED"
    ERROR = "ERROR"
    STOPPED = "STOPPED"
    RESULTS_UPLOAD_FAILED = "RESULTS_UPLOAD_FAILED"


# A model's definition (details, files) may change only while no training of it is queued or running.
EDITABLE_MODEL_STATES: frozenset[ModelStatus] = frozenset(
    {
        ModelStatus.PENDING,
        ModelStatus.ERROR,
        ModelStatus.STOPPED,
        ModelStatus.RESULTS_UPLOADED,
        ModelStatus.RESULTS_UPLOAD_FAILED,
    }
)


class FlBackend(StrEnum):
    FLOWER = "FLOWER"
    NVFLARE = "NVFLARE"


class JobType(StrEnum):
    STANDARD = "standard"  # FedAvg
    FED_OPT = "fed_opt"  # a server-side optimiser over the averaged update
    EVALUATION = "evaluation"  # evaluate an uploaded checkpoint at every selected trust


class FileStatus(StrEnum):
    """Where an uploaded file is: waiting for its bytes (presigned upload), in quarantine being scanned,
    promoted (CLEAN), or refused by the scan (BLOCKED; its bytes are deleted, the row says why)."""

    UPLOADING = "UPLOADING"
    SCANNING = "SCANNING"
    CLEAN = "CLEAN"
    BLOCKED = "BLOCKED"


class Model(UuidPk, Timestamps, Base):
    __tablename__ = "models"
    __table_args__ = (
        Index(
            "uq_models_project_name_live",
            text("project_id"),
            func.lower(text("name")),
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[FlBackend] = mapped_column(Enum(FlBackend, name="fl_backend"))
    job_type: Mapped[JobType] = mapped_column(
        Enum(JobType, name="fl_job_type", values_callable=lambda e: [m.value for m in e])
    )
    status: Mapped[ModelStatus] = mapped_column(Enum(ModelStatus, name="model_status"), default=ModelStatus.PENDING)
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelFile(UuidPk, Timestamps, Base):
    """One uploaded file of a model. Several rows may share a name while a new version is being scanned;
    when one becomes CLEAN, every other row of that name is removed (the newest clean upload wins)."""

    __tablename__ = "model_files"

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[FileStatus] = mapped_column(Enum(FileStatus, name="file_status"))
    # Known once the bytes are in: the size and sha256 of exactly what was scanned and promoted.
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # Where the bytes are: the quarantine key until promoted, then the promoted key; NULL once deleted.
    object_key: Mapped[str | None] = mapped_column(String(512))
    # Scan findings ({tool, severity, message, line}); advisory: findings that did not block (bandit on .py).
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    advisory: Mapped[bool] = mapped_column(Boolean, default=False)
    uploaded_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # When the current scan began (a row SCANNING far past this is rescanned by the worker's sweep).
    scan_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scanned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A presigned upload must arrive before this, or the row is dropped by the sweep.
    upload_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
