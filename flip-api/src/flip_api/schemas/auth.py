"""Request and response bodies of the sign-in routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, EmailStr, StringConstraints

from flip_api.schemas.common import Strict
from flip_api.services.auth import LoginStatus, TokenPair

Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=6, max_length=8)]
Token = Annotated[str, StringConstraints(min_length=10, max_length=4096)]


class LoginIn(Strict):
    email: EmailStr
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Tokens(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - OAuth token type, not a secret
    access_expires_at: datetime
    refresh_token: str

    @classmethod
    def of(cls, pair: TokenPair) -> Tokens:
        return cls(
            access_token=pair.access_token,
            access_expires_at=pair.access_expires_at,
            refresh_token=pair.refresh_token,
        )


class LoginOut(BaseModel):
    status: LoginStatus
    tokens: Tokens | None = None
    mfa_token: str | None = None


class MfaCodeIn(Strict):
    mfa_token: Token
    code: Code


class MfaTokenIn(Strict):
    mfa_token: Token


class EnrolmentOut(BaseModel):
    secret: str
    otpauth_uri: str
    qr_svg: str


class RefreshIn(Strict):
    refresh_token: Token
