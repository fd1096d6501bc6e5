"""Trusts (hospitals) and their payload keyring."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, LargeBinary, String, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from flip_api.db.models.base import Base, UuidPk


class Trust(UuidPk, Base):
    __tablename__ = "trusts"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    region: Mapped[str] = mapped_column(String(100), default="")
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    payload_key_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    services_health: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    fl_identity: Mapped[str | None] = mapped_column(String(128))
    # The public key (OpenSSH) of the trust's FL client (its Flower SuperNode), as the trust last sent it.
    fl_node_key: Mapped[str | None] = mapped_column(Text)


class TrustPayloadKey(Base):
    """One key of a trust's payload keyring, wrapped (AES-GCM) with the hub data key."""

    __tablename__ = "trust_payload_keys"
    __table_args__ = (UniqueConstraint("trust_id", "kid"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    trust_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trusts.id", ondelete="CASCADE"), index=True)
    kid: Mapped[str] = mapped_column(String(128))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
