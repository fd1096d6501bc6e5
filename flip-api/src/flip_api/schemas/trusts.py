"""Request and response bodies for trusts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints

from flip_api.schemas.common import Name, Strict
from flip_api.services.trusts import TrustStatus

TrustCode = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=2, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
]
Region = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]


class TrustOut(BaseModel):
    id: uuid.UUID
    name: str
    code: str
    region: str
    created_at: datetime
    last_heartbeat: datetime | None
    status: TrustStatus
    services_health: dict[str, Any] | None
    decides_as: str


class TrustRegister(Strict):
    name: Name
    code: TrustCode
    region: Region = ""


class KitOut(BaseModel):
    """Keys are in plaintext here and nowhere else, ever: store ``kit_env`` as the trust's kit file."""

    trust: TrustOut
    kit_env: str
    api_key: str
    payload_key_id: str


class TrustAdminIn(Strict):
    user_id: uuid.UUID


class TrustAdminOut(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
