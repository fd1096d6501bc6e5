"""Request and response bodies for users, roles and access requests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, EmailStr, Field, StringConstraints

from flip_api.core.permissions import RoleName
from flip_api.db.models import AccessRequestStatus
from flip_api.schemas.common import LongText, Name, Public, ShortText, Strict

Password = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class GrantOut(BaseModel):
    role: RoleName
    trust_id: uuid.UUID | None


class UserOut(Public):
    id: uuid.UUID
    email: str
    name: str
    organisation: str
    enabled: bool
    mfa_enabled: bool
    created_at: datetime
    roles: list[GrantOut]


class MeOut(UserOut):
    permissions: list[str]


class UserCreate(Strict):
    email: EmailStr
    name: Name
    organisation: ShortText = ""
    roles: list[RoleName] = Field(default_factory=list, max_length=4)


class UserCreated(BaseModel):
    user: UserOut
    initial_password: str = Field(description="shown once; the user should change it after signing in")


class UserUpdate(Strict):
    name: Name | None = None
    organisation: ShortText | None = None
    enabled: bool | None = None


class ProfileUpdate(Strict):
    name: Name | None = None
    organisation: ShortText | None = None


class PasswordChange(Strict):
    current_password: Password
    new_password: Password


class RolesIn(Strict):
    roles: list[RoleName] = Field(max_length=4)


class UserLookupOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str


class RoleOut(BaseModel):
    name: RoleName
    description: str
    trust_scoped: bool
    permissions: list[str]


class AccessRequestIn(Strict):
    email: EmailStr
    name: Name
    organisation: ShortText = ""
    reason: Annotated[LongText, StringConstraints(min_length=1)]


class AccessRequestAck(BaseModel):
    status: str = "received"
    detail: str = "Thank you; an administrator will review your request."


class AccessRequestOut(Public):
    id: uuid.UUID
    email: str
    name: str
    organisation: str
    reason: str
    status: AccessRequestStatus
    created_at: datetime
    updated_at: datetime
    handled_by: uuid.UUID | None
    user_id: uuid.UUID | None


class EnrolIn(Strict):
    roles: list[RoleName] = Field(min_length=1, max_length=4)
