"""Sign-in flows against the real hub and database: MFA enrolment, verification, tokens, lockout."""

from __future__ import annotations

import time

import httpx
import pyotp
from hub_testing import MakeUser
from sqlalchemy import select

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, User


async def _enrol(client: httpx.AsyncClient, email: str, password: str) -> tuple[str, dict[str, str]]:
    """Full first sign-in: password → enrol TOTP → confirm. Returns the TOTP secret and tokens."""
    r = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "mfa_enrolment_required"
    assert r.json()["tokens"] is None
    mfa_token = r.json()["mfa_token"]
    r = await client.post("/api/auth/mfa/enrol", json={"mfa_token": mfa_token})
    assert r.status_code == 200, r.text
    enrolment = r.json()
    assert enrolment["otpauth_uri"].startswith("otpauth://totp/")
    assert enrolment["qr_svg"].startswith("<svg") or "svg" in enrolment["qr_svg"][:100]
    code = pyotp.TOTP(enrolment["secret"]).now()
    r = await client.post("/api/auth/mfa/enrol/confirm", json={"mfa_token": mfa_token, "code": code})
    assert r.status_code == 200, r.text
    return enrolment["secret"], r.json()


async def test_first_sign_in_requires_mfa_enrolment_then_code(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    u = await make_user(RoleName.RESEARCHER)
    secret, tokens = await _enrol(client, u.user.email, u.password)
    me = await client.get("/api/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json()["mfa_enabled"] is True
    assert me.json()["permissions"] == ["CAN_CREATE_PROJECTS"]

    # Next sign-in asks for a code; the code used at enrolment cannot be replayed.
    r = await client.post("/api/auth/login", json={"email": u.user.email, "password": u.password})
    assert r.json()["status"] == "mfa_required"
    mfa_token = r.json()["mfa_token"]
    totp = pyotp.TOTP(secret)
    replay = totp.now()
    r = await client.post("/api/auth/mfa/verify", json={"mfa_token": mfa_token, "code": replay})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_mfa_code"
    next_code = totp.at(time.time() + 30)
    r = await client.post("/api/auth/mfa/verify", json={"mfa_token": mfa_token, "code": next_code})
    assert r.status_code == 200, r.text
    assert r.json()["access_token"]


async def test_enrol_token_cannot_skip_to_verify_and_wrong_code_refused(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    u = await make_user(RoleName.VIEWER)
    r = await client.post("/api/auth/login", json={"email": u.user.email, "password": u.password})
    mfa_token = r.json()["mfa_token"]
    r = await client.post("/api/auth/mfa/verify", json={"mfa_token": mfa_token, "code": "123456"})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_mfa_token"
    await client.post("/api/auth/mfa/enrol", json={"mfa_token": mfa_token})
    r = await client.post("/api/auth/mfa/enrol/confirm", json={"mfa_token": mfa_token, "code": "000000"})
    assert r.status_code == 401
    r = await client.post("/api/auth/mfa/enrol/confirm", json={"mfa_token": "garbage-token-xyz", "code": "000000"})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_mfa_token"


async def test_wrong_password_and_unknown_email_look_the_same(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    u = await make_user(RoleName.VIEWER)
    wrong = await client.post("/api/auth/login", json={"email": u.user.email, "password": "nope-nope-nope"})
    unknown = await client.post("/api/auth/login", json={"email": "ghost@example.org", "password": "nope-nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "email or password is incorrect", "code": "invalid_credentials"}


async def test_lockout_after_repeated_failures(client: httpx.AsyncClient, make_user: MakeUser, hub: HubState) -> None:
    u = await make_user(RoleName.VIEWER)
    for _ in range(hub.settings.login_max_failures):
        r = await client.post("/api/auth/login", json={"email": u.user.email, "password": "wrong-password!"})
        assert r.status_code == 401
    r = await client.post("/api/auth/login", json={"email": u.user.email, "password": u.password})
    assert r.status_code == 423
    assert r.json()["code"] == "account_locked"
    async with hub.sessions() as s:
        locked = await s.scalar(select(AuditEntry).where(AuditEntry.action == "user.locked"))
        assert locked is not None
        assert locked.subject_id == str(u.id)


async def test_dev_switch_signs_in_without_mfa(client: httpx.AsyncClient, make_user: MakeUser, hub: HubState) -> None:
    hub.settings.mfa_required = False
    u = await make_user(RoleName.VIEWER)
    r = await client.post("/api/auth/login", json={"email": u.user.email, "password": u.password})
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["tokens"]["access_token"]


async def test_refresh_rotates_and_reuse_revokes_session(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    u = await make_user(RoleName.RESEARCHER)
    _, tokens = await _enrol(client, u.user.email, u.password)
    first_refresh = tokens["refresh_token"]
    r = await client.post("/api/auth/refresh", json={"refresh_token": first_refresh})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first_refresh
    headers = {"Authorization": f"Bearer {second['access_token']}"}
    assert (await client.get("/api/users/me", headers=headers)).status_code == 200
    # Presenting the spent token again looks like theft: the whole session dies.
    r = await client.post("/api/auth/refresh", json={"refresh_token": first_refresh})
    assert r.status_code == 401
    assert r.json()["code"] == "refresh_token_reused"
    r = await client.get("/api/users/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == "session_revoked"
    r = await client.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401


async def test_logout_revokes_access_token(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    u = await make_user(RoleName.VIEWER)
    assert (await client.get("/api/users/me", headers=u.headers)).status_code == 200
    assert (await client.post("/api/auth/logout", headers=u.headers)).status_code == 204
    r = await client.get("/api/users/me", headers=u.headers)
    assert r.status_code == 401
    assert r.json()["code"] == "session_revoked"


async def test_bad_tokens_get_clear_codes(client: httpx.AsyncClient, make_user: MakeUser, hub: HubState) -> None:
    r = await client.get("/api/users/me")
    assert r.status_code == 401
    assert r.json()["code"] == "not_authenticated"
    r = await client.get("/api/users/me", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_token"
    u = await make_user(RoleName.VIEWER)
    # An MFA-step token is not an access token.
    r = await client.post("/api/auth/login", json={"email": u.user.email, "password": u.password})
    r = await client.get("/api/users/me", headers={"Authorization": f"Bearer {r.json()['mfa_token']}"})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_token"


async def test_disabled_user_is_signed_out(client: httpx.AsyncClient, make_user: MakeUser, hub: HubState) -> None:
    u = await make_user(RoleName.VIEWER)
    async with hub.sessions() as s:
        user = await s.get(User, u.id)
        assert user is not None
        user.enabled = False
        await s.commit()
    r = await client.get("/api/users/me", headers=u.headers)
    assert r.status_code == 401
    assert r.json()["code"] == "account_disabled"
    r = await client.post("/api/auth/login", json={"email": u.user.email, "password": u.password})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_credentials"


async def test_login_rate_limit(client: httpx.AsyncClient, hub: HubState) -> None:
    hub.settings.rate_limit_login_per_min = 3
    hub.limiter.reset()
    codes = [
        (await client.post("/api/auth/login", json={"email": "x@example.org", "password": "p"})).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
