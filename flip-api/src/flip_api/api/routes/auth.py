"""Sign-in: password, MFA (verify or enrol), token refresh and sign-out."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from flip_api.api.deps import CurrentUser, HubDep, SessionDep
from flip_api.schemas.auth import EnrolmentOut, LoginIn, LoginOut, MfaCodeIn, MfaTokenIn, RefreshIn, Tokens
from flip_api.services import auth

router = APIRouter(prefix="/auth", tags=["auth"])


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/login", response_model=LoginOut)
async def login(body: LoginIn, request: Request, hub: HubDep, db: SessionDep) -> LoginOut:
    """Check email + password. The answer says whether tokens follow or an MFA step comes next."""
    hub.limiter.check("login", _client_ip(request), hub.settings.rate_limit_login_per_min)
    hub.limiter.check("login-account", str(body.email).lower(), hub.settings.rate_limit_login_per_min)
    outcome = await auth.login(db, hub, str(body.email), body.password)
    await db.commit()
    return LoginOut(
        status=outcome.status,
        tokens=Tokens.of(outcome.tokens) if outcome.tokens else None,
        mfa_token=outcome.mfa_token,
    )


@router.post("/mfa/verify", response_model=Tokens)
async def mfa_verify(body: MfaCodeIn, request: Request, hub: HubDep, db: SessionDep) -> Tokens:
    """Second factor for an enrolled user: the 6-digit code from their authenticator app."""
    hub.limiter.check("login", _client_ip(request), hub.settings.rate_limit_login_per_min)
    pair = await auth.verify_mfa(db, hub, body.mfa_token, body.code)
    await db.commit()
    return Tokens.of(pair)


@router.post("/mfa/enrol", response_model=EnrolmentOut)
async def mfa_enrol(body: MfaTokenIn, request: Request, hub: HubDep, db: SessionDep) -> EnrolmentOut:
    """Start TOTP enrolment: the secret, its otpauth URI and a QR code (SVG) for authenticator apps."""
    hub.limiter.check("login", _client_ip(request), hub.settings.rate_limit_login_per_min)
    enrolment = await auth.begin_enrolment(db, hub, body.mfa_token)
    await db.commit()
    return EnrolmentOut(secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri, qr_svg=enrolment.qr_svg)


@router.post("/mfa/enrol/confirm", response_model=Tokens)
async def mfa_enrol_confirm(body: MfaCodeIn, request: Request, hub: HubDep, db: SessionDep) -> Tokens:
    """Finish enrolment with a first code; signs the user in."""
    hub.limiter.check("login", _client_ip(request), hub.settings.rate_limit_login_per_min)
    pair = await auth.confirm_enrolment(db, hub, body.mfa_token, body.code)
    await db.commit()
    return Tokens.of(pair)


@router.post("/refresh", response_model=Tokens)
async def refresh(body: RefreshIn, request: Request, hub: HubDep, db: SessionDep) -> Tokens:
    """Exchange a refresh token for a new pair; the old refresh token is spent."""
    hub.limiter.check("refresh", _client_ip(request), hub.settings.rate_limit_login_per_min * 3)
    pair = await auth.refresh(db, hub, body.refresh_token)
    await db.commit()
    return Tokens.of(pair)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(user: CurrentUser, db: SessionDep) -> Response:
    """Revoke the current session: its access and refresh tokens stop working at once."""
    if user.session_id is not None:
        await auth.logout(db, user.id, user.session_id)
        await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
