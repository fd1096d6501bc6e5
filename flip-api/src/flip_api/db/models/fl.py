"""FL nets (one FL server each, with its control API) and the training jobs scheduled onto them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, DateTime, Enum, ForeignKey, Index, Integer, LargeBinary, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from flip_api.db.models.base import Base, Timestamps, UuidPk
from flip_api.db.models.models import FlBackend, ModelStatus


class NetStatus(StrEnum):
    AVAILABLE = "AVAILABLE"  # takes the next job of its backend
    BUSY = "BUSY"  # running a job (one at a time)
    DISABLED = "DISABLED"  # taken out of scheduling by an admin


class FlNet(UuidPk, Timestamps, Base):
    __tablename__ = "fl_nets"
    __table_args__ = (Index("uq_fl_nets_name", func.lower(text("name")), unique=True),)

    name: Mapped[str] = mapped_column(String(100))
    backend: Mapped[FlBackend] = mapped_column(Enum(FlBackend, name="fl_backend"))
    # Where the hub reaches the net's control API (e.g. a Flower SuperLink's Control API address).
    endpoint: Mapped[str] = mapped_column(String(500))
    # BUSY while a job whose net_id is this net is PREPARING or RUNNING.
    status: Mapped[NetStatus] = mapped_column(Enum(NetStatus, name="fl_net_status"), default=NetStatus.AVAILABLE)
    # The net key (hub -> net calls, and net -> hub reports), sealed under the hub data key.
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    # What trusts dial and the CA they trust, as the net last reported them (GET /health).
    fleet_address: Mapped[str | None] = mapped_column(String(500))
    ca_cert: Mapped[str | None] = mapped_column(Text)
    # The job this net runs or last ran; BUSY is released once that job has ended and its run is stopped.
    current_job_id: Mapped[uuid.UUID | None] = mapped_column()
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class FlNetNode(Base):
    """A trust's SuperNode key as registered on one net (so it is registered once, and again if it changes)."""

    __tablename__ = "fl_net_nodes"

    net_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fl_nets.id", ondelete="CASCADE"), primary_key=True)
    trust_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trusts.id", ondelete="CASCADE"), primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FlJob(UuidPk, Timestamps, Base):
    """One training run of a model. Its status follows the model's states from QUEUED on; a model has one
    live job at a time, and a new one each time it is initiated again."""

    __tablename__ = "fl_jobs"
    __table_args__ = (
        # The queue: oldest QUEUED first, per backend.
        Index("ix_fl_jobs_queue", "backend", "queued_at", postgresql_where=text("status = 'QUEUED'")),
    )

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    backend: Mapped[FlBackend] = mapped_column(Enum(FlBackend, name="fl_backend"))
    status: Mapped[ModelStatus] = mapped_column(Enum(ModelStatus, name="model_status"))
    # The trusts chosen for this run (each had approved the project when it was initiated).
    trust_ids: Mapped[list[str]] = mapped_column(JSONB)
    # The validated run configuration: rounds, strategy, min_clients, round_timeout_s, seed, ...
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    net_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("fl_nets.id", ondelete="SET NULL"))
    run_id: Mapped[str | None] = mapped_column(String(100))  # the backend's id for the run
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # taken off the queue
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last sign of life from the net (a report, or the worker seeing the run alive): the watchdog's clock.
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why it ended as ERROR or STOPPED, in words safe to show; and the end of its log, sanitised.
    reason: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)


class FlEvent(Base):
    """One typed event an FL server reported about a job's run (round metrics per trust, drops, the end)."""

    __tablename__ = "fl_events"
    __table_args__ = (Index("uq_fl_events_digest", "job_id", "digest", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fl_jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    round: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # sha256 of the event as sent: a retried delivery is stored once.
    digest: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FlResult(Base):
    """A result file of a job (the final model, its lineage), stored in the object store."""

    __tablename__ = "fl_results"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fl_jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
