"""FL nets (admin), what a trust's FL client needs to know, and a training job's events and results."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from flip_api.db.models import FlEvent, FlNet, FlResult, NetStatus
from flip_api.db.models.models import FlBackend
from flip_api.schemas.common import Public, Strict
from flip_api.schemas.models import JobOut

NetName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Endpoint = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^https?://[^\s]+$", max_length=500)]


class NetIn(Strict):
    name: NetName
    backend: FlBackend = FlBackend.FLOWER
    endpoint: Endpoint = Field(description="the net's control API, e.g. http://fl-net-1:8090")


class NetPatch(Strict):
    enabled: bool | None = Field(None, description="false: no new job is scheduled onto this net")
    endpoint: Endpoint | None = None


class NetOut(Public):
    id: uuid.UUID
    name: str
    backend: FlBackend
    endpoint: str
    status: NetStatus
    fleet_address: str | None
    current_job_id: uuid.UUID | None
    last_seen_at: datetime | None
    last_error: str | None

    @classmethod
    def of(cls, net: FlNet) -> NetOut:
        return cls(
            id=net.id,
            name=net.name,
            backend=net.backend,
            endpoint=net.endpoint,
            status=net.status,
            fleet_address=net.fleet_address,
            current_job_id=net.current_job_id,
            last_seen_at=net.last_seen_at,
            last_error=net.last_error,
        )


class NetCreated(Public):
    net: NetOut
    key: str = Field(description="the net key, shown once: give it to the net as FLIP_NET_KEY")


class NodeKeyIn(Strict):
    public_key: Annotated[str, StringConstraints(strip_whitespace=True, min_length=40, max_length=2000)] = Field(
        description="the trust's SuperNode public key (one OpenSSH line)"
    )


class NodeKeyOut(Public):
    trust_id: uuid.UUID
    changed: bool


class TrustNetOut(Public):
    """A Flower net a trust's SuperNode dials (outbound): its address and the CA that signs its certificate."""

    name: str
    backend: FlBackend
    fleet_address: str
    ca_cert: str


class EventAck(Public):
    stored: bool = Field(description="false: a repeat, or the job had already ended (ignored)")


class ResultOut(Public):
    name: str
    bytes: int
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, row: FlResult) -> ResultOut:
        return cls(name=row.name, bytes=row.bytes, sha256=row.sha256, created_at=row.created_at)


class EventOut(Public):
    event: str
    round: int | None
    at: datetime
    payload: dict[str, Any]

    @classmethod
    def of(cls, row: FlEvent) -> EventOut:
        return cls(event=row.event, round=row.round, at=row.at, payload=row.payload)


class JobDetailOut(Public):
    job: JobOut
    log_tail: str | None = Field(description="the end of the FL server's log, sanitised (when the run failed)")
    events: list[EventOut]
    results: list[ResultOut]
