"""Sign-in: password check with lockout, TOTP MFA, sessions with rotating refresh tokens."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import pyotp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import ApiError, Conflict, NotAuthenticated
from flip_api.core.security import (
    InvalidToken,
    decode_token,
    hash_refresh_token,
    issue_token,
    new_refresh_token,
    new_totp_secret,
    open_secret,
    seal_secret,
    totp_qr_svg,
    totp_uri,
    verify_password,
)
from flip_api.core.state import HubState
from flip_api.db.models import AuthSession, RefreshToken, User
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.users import find_by_email

MFA_TOKEN_TTL_S = 300
_TOTP_PURPOSE = "user:totp"


class LoginStatus(StrEnum):
    OK = "ok"
    MFA_REQUIRED = "mfa_required"
    MFA_ENROLMENT_REQUIRED = "mfa_enrolment_required"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    session_id: uuid.UUID


@dataclass(frozen=True)
class LoginOutcome:
    status: LoginStatus
    tokens: TokenPair | None = None
    mfa_token: str | None = None


class AccountLocked(ApiError):
    status_code = 423
    code = "account_locked"


def _bad_credentials() -> NotAuthenticated:
    # One message for unknown email, wrong password and disabled account: no user enumeration.
    return NotAuthenticated("email or password is incorrect", code="invalid_credentials")


async def start_session(db: AsyncSession, hub: HubState, user: User) -> TokenPair:
    """Open a session for ``user`` and issue its first access + refresh tokens."""
    settings = hub.settings
    session = AuthSession(
        id=uuid.uuid4(),
        user_id=user.id,
        expires_at=datetime.now(UTC) + timedelta(seconds=settings.refresh_token_ttl_s),
    )
    db.add(session)
    await db.flush()
    return await _issue_pair(db, hub, user.id, session.id)


async def _issue_pair(db: AsyncSession, hub: HubState, user_id: uuid.UUID, session_id: uuid.UUID) -> TokenPair:
    refresh = new_refresh_token()
    db.add(RefreshToken(id=uuid.uuid4(), session_id=session_id, token_hash=hash_refresh_token(refresh)))
    access, expires = issue_token(
        hub.jwt_secret,
        kind="access",
        user_id=user_id,
        session_id=session_id,
        ttl_s=hub.settings.access_token_ttl_s,
    )
    await db.flush()
    return TokenPair(access, expires, refresh, session_id)


async def login(db: AsyncSession, hub: HubState, email: str, password: str) -> LoginOutcome:
    """Check the password (with lockout) and decide the next step: tokens, MFA code, or MFA enrolment."""
    settings = hub.settings
    user = await find_by_email(db, email)
    now = datetime.now(UTC)
    if user is not None and user.locked_until is not None and user.locked_until > now:
        verify_password(password, None)  # same cost as a real attempt
        raise AccountLocked("account temporarily locked after repeated failures; try again later")
    if not verify_password(password, user.password_hash if user else None) or user is None:
        if user is not None:
            user.failed_logins += 1
            if user.failed_logins >= settings.login_max_failures:
                user.locked_until = now + timedelta(seconds=settings.login_lockout_s)
                user.failed_logins = 0
                await audit.record(db, Actor.system("auth"), "user.locked", "user", user.id, {})
            await db.commit()
        raise _bad_credentials()
    if not user.enabled:
        raise _bad_credentials()
    user.failed_logins = 0
    user.locked_until = None
    if user.totp_enabled_at is not None:
        return LoginOutcome(LoginStatus.MFA_REQUIRED, mfa_token=_mfa_token(hub, user, "verify"))
    if settings.mfa_required:
        return LoginOutcome(LoginStatus.MFA_ENROLMENT_REQUIRED, mfa_token=_mfa_token(hub, user, "enrol"))
    tokens = await start_session(db, hub, user)
    await audit.record(db, Actor.user(user.id), "user.login", "user", user.id, {"mfa": False})
    return LoginOutcome(LoginStatus.OK, tokens=tokens)


def _mfa_token(hub: HubState, user: User, stage: str) -> str:
    token, _ = issue_token(
        hub.jwt_secret,
        kind="mfa",
        user_id=user.id,
        session_id=None,
        ttl_s=MFA_TOKEN_TTL_S,
        extra={"stage": stage},
    )
    return token


async def _user_from_mfa_token(db: AsyncSession, hub: HubState, token: str, stage: str) -> User:
    try:
        claims = decode_token(hub.jwt_secret, token, kind="mfa")
        user_id = uuid.UUID(claims["sub"])
    except (InvalidToken, KeyError, ValueError) as exc:
        raise NotAuthenticated(f"MFA token rejected: {exc}; sign in again", code="invalid_mfa_token") from exc
    if claims.get("stage") != stage:
        raise NotAuthenticated("MFA token is for a different step; sign in again", code="invalid_mfa_token")
    user = await db.get(User, user_id, with_for_update=True)
    if user is None or not user.enabled:
        raise _bad_credentials()
    return user


def _accept_code(user: User, secret: str, code: str) -> bool:
    """Accept a TOTP code at most once (a replayed code within its window is refused)."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return False
    totp = pyotp.TOTP(secret)
    now_step = int(time.time()) // totp.interval
    for step in (now_step, now_step - 1, now_step + 1):
        if totp.at(step * totp.interval) == code:
            if user.totp_last_step is not None and step <= user.totp_last_step:
                return False
            user.totp_last_step = step
            return True
    return False


async def verify_mfa(db: AsyncSession, hub: HubState, mfa_token: str, code: str) -> TokenPair:
    user = await _user_from_mfa_token(db, hub, mfa_token, "verify")
    if user.totp_secret_enc is None:
        raise Conflict("MFA is not enrolled for this account", code="mfa_not_enrolled")
    secret = open_secret(hub.data_key, _TOTP_PURPOSE, user.totp_secret_enc).decode()
    if not _accept_code(user, secret, code):
        await _count_failure(db, hub, user)
        raise NotAuthenticated("MFA code is incorrect or already used", code="invalid_mfa_code")
    tokens = await start_session(db, hub, user)
    await audit.record(db, Actor.user(user.id), "user.login", "user", user.id, {"mfa": True})
    return tokens


async def _count_failure(db: AsyncSession, hub: HubState, user: User) -> None:
    user.failed_logins += 1
    if user.failed_logins >= hub.settings.login_max_failures:
        user.locked_until = datetime.now(UTC) + timedelta(seconds=hub.settings.login_lockout_s)
        user.failed_logins = 0
        await audit.record(db, Actor.system("auth"), "user.locked", "user", user.id, {})
    await db.commit()


@dataclass(frozen=True)
class Enrolment:
    secret: str
    otpauth_uri: str
    qr_svg: str


async def begin_enrolment(db: AsyncSession, hub: HubState, mfa_token: str) -> Enrolment:
    """Generate (or re-show, until confirmed) the TOTP secret for a user who has not enrolled."""
    user = await _user_from_mfa_token(db, hub, mfa_token, "enrol")
    if user.totp_enabled_at is not None:
        raise Conflict("MFA is already enrolled; sign in with a code", code="mfa_already_enrolled")
    if user.totp_secret_enc is None:
        secret = new_totp_secret()
        user.totp_secret_enc = seal_secret(hub.data_key, _TOTP_PURPOSE, secret.encode())
    else:
        secret = open_secret(hub.data_key, _TOTP_PURPOSE, user.totp_secret_enc).decode()
    uri = totp_uri(secret, user.email, hub.settings.mfa_issuer)
    return Enrolment(secret=secret, otpauth_uri=uri, qr_svg=totp_qr_svg(uri))


async def confirm_enrolment(db: AsyncSession, hub: HubState, mfa_token: str, code: str) -> TokenPair:
    user = await _user_from_mfa_token(db, hub, mfa_token, "enrol")
    if user.totp_enabled_at is not None:
        raise Conflict("MFA is already enrolled; sign in with a code", code="mfa_already_enrolled")
    if user.totp_secret_enc is None:
        raise Conflict("start enrolment first", code="mfa_enrolment_not_started")
    secret = open_secret(hub.data_key, _TOTP_PURPOSE, user.totp_secret_enc).decode()
    if not _accept_code(user, secret, code):
        await _count_failure(db, hub, user)
        raise NotAuthenticated("MFA code is incorrect", code="invalid_mfa_code")
    user.totp_enabled_at = datetime.now(UTC)
    await audit.record(db, Actor.user(user.id), "user.mfa_enrolled", "user", user.id, {})
    tokens = await start_session(db, hub, user)
    await audit.record(db, Actor.user(user.id), "user.login", "user", user.id, {"mfa": True})
    return tokens


async def refresh(db: AsyncSession, hub: HubState, refresh_token: str) -> TokenPair:
    """Rotate: the presented token is spent; presenting a spent token again revokes the session."""
    row = await db.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(refresh_token)).with_for_update()
    )
    if row is None:
        raise NotAuthenticated("refresh token not recognised", code="invalid_refresh_token")
    session = await db.get(AuthSession, row.session_id, with_for_update=True)
    now = datetime.now(UTC)
    if session is None or session.revoked_at is not None:
        raise NotAuthenticated("session has been revoked; sign in again", code="session_revoked")
    if row.used_at is not None:
        session.revoked_at = now
        session.revoked_reason = "refresh_token_reuse"
        await audit.record(
            db,
            Actor.system("auth"),
            "session.revoked",
            "user",
            session.user_id,
            {"reason": "refresh_token_reuse"},
        )
        await db.commit()
        raise NotAuthenticated("refresh token already used; session revoked", code="refresh_token_reused")
    if session.expires_at <= now:
        raise NotAuthenticated("session expired; sign in again", code="session_expired")
    user = await db.get(User, session.user_id)
    if user is None or not user.enabled:
        raise NotAuthenticated("account is disabled", code="account_disabled")
    row.used_at = now
    return await _issue_pair(db, hub, user.id, session.id)


async def logout(db: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    session = await db.get(AuthSession, session_id)
    if session is not None and session.revoked_at is None:
        session.revoked_at = datetime.now(UTC)
        session.revoked_reason = "logout"
        await audit.record(db, Actor.user(user_id), "user.logout", "user", user_id, {})
