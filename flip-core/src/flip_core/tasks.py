"""The hub<->trust task protocol: what a trust leases, what it posts back, and its heartbeat.

Work for a trust is a *task*: a type, an encrypted payload (an :class:`~flip_core.crypto.Envelope`
sealed with the trust's payload key for the purpose ``task:<type>``), an attempt counter and, once
leased, a lease token that must accompany the result.  Nothing in here is hub- or trust-specific:
both sides import these models, and neither writes its own copy.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from flip_core.contract import ServiceState
from flip_core.crypto import Envelope

MAX_LEASE_WAIT_S = 25
MAX_LEASE_BATCH = 50
DEFAULT_LEASE_S = 120
MAX_LEASE_EXTENSION_S = 3600
MAX_RESULT_BYTES = 1_000_000

Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_.:-]+$")]
Detail = Annotated[str, StringConstraints(max_length=2000)]


class TaskType(StrEnum):
    PING = "ping"
    COHORT_QUERY = "cohort_query"
    PERSIST_COHORT = "persist_cohort"
    CREATE_IMAGING = "create_imaging"
    GET_IMAGING_STATUS = "get_imaging_status"
    REIMPORT_STUDIES = "reimport_studies"
    DELETE_IMAGING = "delete_imaging"
    SYNC_USER = "sync_user"


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    LEASED = "LEASED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def payload_purpose(task_type: TaskType) -> str:
    """The associated-data purpose a task payload is sealed for: it opens for this type only."""
    return f"task:{task_type.value}"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LeaseRequest(_Wire):
    """Ask for up to ``max_tasks`` tasks, optionally only of some types (those with free slots)."""

    max_tasks: int = Field(10, ge=1, le=MAX_LEASE_BATCH)
    types: list[TaskType] | None = Field(None, max_length=len(TaskType))
    lease_s: int = Field(DEFAULT_LEASE_S, ge=10, le=MAX_LEASE_EXTENSION_S)


class LeasedTask(_Wire):
    id: uuid.UUID
    type: TaskType
    attempt: int = Field(ge=1)
    lease_token: str
    lease_expires_at: datetime
    payload: Envelope
    created_at: datetime


class LeaseResponse(_Wire):
    """The hub echoes the trust the key resolved to; the agent exits if it is not the one in its kit."""

    trust_id: uuid.UUID
    tasks: list[LeasedTask]
    server_time: datetime


class LeaseExtension(_Wire):
    lease_token: str = Field(min_length=16, max_length=128)
    extend_s: int = Field(DEFAULT_LEASE_S, ge=10, le=MAX_LEASE_EXTENSION_S)


class LeaseExtended(_Wire):
    task_id: uuid.UUID
    lease_expires_at: datetime


class TaskError(_Wire):
    """Why a task failed, in a safe category: never a raw exception text from inside the trust."""

    code: Code
    detail: Detail = ""
    retryable: bool = False


class TaskResult(_Wire):
    """The outcome of one leased task; posting it again with the same token returns the same answer."""

    lease_token: str = Field(min_length=16, max_length=128)
    outcome: Literal["completed", "failed"]
    result: dict[str, Any] | None = None
    error: TaskError | None = None


class TaskResultAck(_Wire):
    task_id: uuid.UUID
    status: TaskStatus
    duplicate: bool = Field(description="True when this repeated a result already stored")


class ServiceHealth(_Wire):
    state: ServiceState
    latency_ms: float | None = Field(None, ge=0)
    detail: Detail = ""
    checked_at: datetime


class Heartbeat(_Wire):
    """Liveness plus the latest health snapshot of the trust's own services."""

    agent_version: Annotated[str, StringConstraints(max_length=64)]
    started_at: datetime
    services: dict[Annotated[str, StringConstraints(max_length=64)], ServiceHealth] = Field(max_length=32)
    outbox_pending: int = Field(0, ge=0)


class HeartbeatAck(_Wire):
    trust_id: uuid.UUID
    server_time: datetime


class PingPayload(_Wire):
    """The ``ping`` task: proves the whole path (enqueue → lease → decrypt → handle → result)."""

    message: Annotated[str, StringConstraints(max_length=500)]
    sent_at: datetime


class PingResult(_Wire):
    echo: str
    received_at: datetime
    agent_version: str
