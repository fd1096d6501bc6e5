"""The hub's record of each imaging import: one row per (project, approving trust).

It holds the latest :class:`~flip_core.imaging.ImagingStatus` the trust reported (every count in it a
gated count, stored exactly as the contract model dumped it), the last error of an imaging task, and
the bookkeeping the worker needs to ask for fresh status without flooding the queue.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from flip_api.db.models.base import Base, Timestamps, UuidPk


class ImagingImport(UuidPk, Timestamps, Base):
    """A project's image import at one trust, as the hub last heard of it."""

    __tablename__ = "imaging_imports"
    __table_args__ = (UniqueConstraint("project_id", "trust_id"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    trust_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trusts.id", ondelete="CASCADE"), index=True)
    # The create_imaging task sent at approval (it waits for the trust's persist_cohort).
    import_task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("trust_tasks.id", ondelete="SET NULL"))
    # The threshold the hub asked for in its latest imaging task; an answer must report a k at least this.
    min_k: Mapped[int] = mapped_column(Integer)
    # The validated ImagingStatus (NULL until the first answer); replaced only by a newer one.
    status: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    # The status's own updated_at (the trust's clock): what "newer" is measured by.
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the hub last received this status (again): what "stale" is measured by.
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The task whose answer is the stored status.
    task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("trust_tasks.id", ondelete="SET NULL"))
    # When the worker last asked for a fresh status (get_imaging_status).
    refresh_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last imaging task that ended without an answer; cleared by the next answer.
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    error_task_type: Mapped[str | None] = mapped_column(String(32))
    error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
