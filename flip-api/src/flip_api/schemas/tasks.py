"""How the hub shows a trust's tasks to people (never the payload)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from flip_api.schemas.common import Public, Strict
from flip_core.tasks import TaskStatus


class TaskOut(Public):
    id: uuid.UUID
    trust_id: uuid.UUID
    type: str
    status: TaskStatus
    attempt: int
    max_attempts: int
    depends_on: uuid.UUID | None
    subject_type: str | None
    subject_id: str | None
    error: dict[str, Any] | None
    created_at: datetime
    leased_at: datetime | None
    lease_expires_at: datetime | None
    finished_at: datetime | None


class TaskDetailOut(TaskOut):
    result: dict[str, Any] | None


class PingIn(Strict):
    message: str = Field("ping from the hub", max_length=500)
