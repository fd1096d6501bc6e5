"""The hub→trust work queue: one row per task, payload encrypted at rest with the trust's key."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Enum, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from flip_api.db.models.base import Base, Timestamps, UuidPk
from flip_core.tasks import TaskStatus


class TrustTask(UuidPk, Timestamps, Base):
    __tablename__ = "trust_tasks"
    __table_args__ = (
        Index("ix_trust_tasks_queue", "trust_id", "status", "created_at"),
        Index("ix_trust_tasks_subject", "subject_type", "subject_id"),
    )

    trust_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trusts.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[TaskStatus] = mapped_column(Enum(TaskStatus, name="task_status"), default=TaskStatus.PENDING)
    # The sealed Envelope as JSON text: opens only with the trust's key, for purpose ``task:<type>``.
    payload: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Explicit ordering: this task is handed out only after ``depends_on`` has COMPLETED.
    depends_on: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("trust_tasks.id", ondelete="SET NULL"))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The lease token whose post produced the stored outcome (so a repeated post is recognised).
    result_token: Mapped[str | None] = mapped_column(String(64))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[str | None] = mapped_column(String(64))
