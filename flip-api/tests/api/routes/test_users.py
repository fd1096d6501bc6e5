"""User administration, self-service, lookup and access requests."""

from __future__ import annotations

import httpx
from hub_testing import MakeUser
from sqlalchemy import func, select

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AccessRequest, AuditEntry, User


async def test_admin_creates_user_password_shown_once(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    r = await client.post(
        "/api/users",
        headers=admin.headers,
        json={"email": "New.Person@Example.org", "name": "New Person", "roles": ["Researcher"]},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["user"]["email"] == "new.person@example.org"
    assert body["user"]["roles"] == [{"role": "Researcher", "trust_id": None}]
    assert len(body["initial_password"]) >= 12
    login = await client.post(
        "/api/auth/login", json={"email": "new.person@example.org", "password": body["initial_password"]}
    )
    assert login.json()["status"] == "mfa_enrolment_required"
    got = await client.get(f"/api/users/{body['user']['id']}", headers=admin.headers)
    assert "initial_password" not in got.json()
    dup = await client.post(
        "/api/users", headers=admin.headers, json={"email": "new.person@EXAMPLE.org", "name": "Again"}
    )
    assert dup.status_code == 409
    assert dup.json()["code"] == "duplicate_email"


async def test_trust_admin_role_cannot_be_granted_globally(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    target = await make_user()
    r = await client.put(f"/api/users/{target.id}/roles", headers=admin.headers, json={"roles": ["Trust Admin"]})
    assert r.status_code == 422
    assert r.json()["code"] == "trust_role"
    r = await client.put(f"/api/users/{target.id}/roles", headers=admin.headers, json={"roles": ["Superuser"]})
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error"
    r = await client.put(
        f"/api/users/{target.id}/roles", headers=admin.headers, json={"roles": ["Researcher", "Viewer"]}
    )
    assert r.status_code == 200
    assert sorted(g["role"] for g in r.json()["roles"]) == ["Researcher", "Viewer"]
    me = await client.get("/api/users/me", headers=target.headers)
    assert me.json()["permissions"] == ["CAN_CREATE_PROJECTS"]


async def test_disabling_a_user_revokes_their_sessions(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    target = await make_user(RoleName.RESEARCHER)
    r = await client.patch(f"/api/users/{target.id}", headers=admin.headers, json={"enabled": False})
    assert r.status_code == 200
    assert r.json()["enabled"] is False
    assert (await client.get("/api/users/me", headers=target.headers)).status_code == 401


async def test_admin_session_revoke_and_mfa_reset(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    target = await make_user(RoleName.VIEWER)
    r = await client.post(f"/api/users/{target.id}/sessions/revoke", headers=admin.headers)
    assert r.status_code == 204
    assert (await client.get("/api/users/me", headers=target.headers)).status_code == 401
    r = await client.post(f"/api/users/{target.id}/mfa/reset", headers=admin.headers)
    assert r.status_code == 200
    assert r.json()["mfa_enabled"] is False


async def test_profile_and_password_change(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    u = await make_user(RoleName.VIEWER)
    r = await client.patch("/api/users/me", headers=u.headers, json={"name": "Renamed", "organisation": "KCL"})
    assert r.status_code == 200
    assert r.json()["name"] == "Renamed"
    r = await client.patch("/api/users/me", headers=u.headers, json={"email": "evil@example.org"})
    assert r.status_code == 422
    r = await client.post(
        "/api/users/me/password", headers=u.headers, json={"current_password": "wrong", "new_password": "x" * 16}
    )
    assert r.status_code == 401
    r = await client.post(
        "/api/users/me/password", headers=u.headers, json={"current_password": u.password, "new_password": "short"}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "weak_password"
    r = await client.post(
        "/api/users/me/password",
        headers=u.headers,
        json={"current_password": u.password, "new_password": "a-much-longer-password"},
    )
    assert r.status_code == 204
    # Changing the password signs out every session, this one included.
    assert (await client.get("/api/users/me", headers=u.headers)).status_code == 401
    r = await client.post("/api/auth/login", json={"email": u.user.email, "password": "a-much-longer-password"})
    assert r.status_code == 200


async def test_lookup_finds_enabled_users_only(client: httpx.AsyncClient, make_user: MakeUser, hub: HubState) -> None:
    researcher = await make_user(RoleName.RESEARCHER)
    other = await make_user(RoleName.VIEWER, email="colleague@example.org")
    r = await client.get("/api/users/lookup", params={"email": "Colleague@example.org"}, headers=researcher.headers)
    assert r.status_code == 200
    assert r.json() == {"id": str(other.id), "email": "colleague@example.org", "name": "Test User"}
    r = await client.get("/api/users/lookup", params={"email": "nobody@example.org"}, headers=researcher.headers)
    assert r.status_code == 404
    hub.settings.rate_limit_user_lookup_per_min = 2
    hub.limiter.reset()
    codes = [
        (
            await client.get("/api/users/lookup", params={"email": "nobody@example.org"}, headers=researcher.headers)
        ).status_code
        for _ in range(3)
    ]
    assert codes == [404, 404, 429]


async def test_list_users_paginates(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    for i in range(4):
        await make_user(RoleName.VIEWER, email=f"pager{i}@example.org")
    r = await client.get("/api/users", headers=admin.headers, params={"page": 1, "page_size": 3, "q": "pager"})
    assert r.status_code == 200
    assert r.json()["total"] == 4
    assert len(r.json()["items"]) == 3
    r = await client.get("/api/users", headers=admin.headers, params={"page": 2, "page_size": 3, "q": "pager"})
    assert len(r.json()["items"]) == 1
    r = await client.get("/api/users", headers=admin.headers, params={"page_size": 1000})
    assert r.status_code == 422


async def test_access_request_flow(client: httpx.AsyncClient, make_user: MakeUser, hub: HubState) -> None:
    body = {"email": "applicant@example.org", "name": "Applicant", "reason": "Cardiac imaging study"}
    r = await client.post("/api/access-requests", json=body)
    assert r.status_code == 202
    # Asking twice while pending is idempotent.
    assert (await client.post("/api/access-requests", json=body)).status_code == 202
    async with hub.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(AccessRequest)) == 1
    admin = await make_user(RoleName.ADMIN)
    r = await client.get("/api/access-requests", headers=admin.headers, params={"status": "PENDING"})
    assert r.json()["total"] == 1
    request_id = r.json()["items"][0]["id"]
    r = await client.post(f"/api/access-requests/{request_id}/enrol", headers=admin.headers, json={"roles": ["Viewer"]})
    assert r.status_code == 201, r.text
    assert r.json()["user"]["email"] == "applicant@example.org"
    again = await client.post(f"/api/access-requests/{request_id}/dismiss", headers=admin.headers)
    assert again.status_code == 409
    assert again.json()["code"] == "access_request_handled"
    async with hub.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(User).where(User.email == "applicant@example.org")) == 1
        actions = (await s.scalars(select(AuditEntry.action).order_by(AuditEntry.seq))).all()
        assert "access_request.created" in actions
        assert "access_request.enrolled" in actions


async def test_access_request_enrol_of_existing_email_writes_nothing(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    existing = await make_user(RoleName.VIEWER, email="taken@example.org")
    await client.post("/api/access-requests", json={"email": existing.user.email, "name": "X", "reason": "again"})
    admin = await make_user(RoleName.ADMIN)
    request_id = (await client.get("/api/access-requests", headers=admin.headers)).json()["items"][0]["id"]
    r = await client.post(f"/api/access-requests/{request_id}/enrol", headers=admin.headers, json={"roles": ["Viewer"]})
    assert r.status_code == 409
    async with hub.sessions() as s:
        row = await s.scalar(select(AccessRequest))
        assert row is not None
        assert row.status.value == "PENDING"


async def test_access_request_validation(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/access-requests", json={"email": "not-an-email", "name": "X", "reason": "r"})
    assert r.status_code == 422
    r = await client.post("/api/access-requests", json={"email": "a@example.org", "name": "X" * 201, "reason": "r"})
    assert r.status_code == 422
    assert "name" in r.json()["detail"]


async def test_roles_catalogue(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    u = await make_user(RoleName.VIEWER)
    r = await client.get("/api/roles", headers=u.headers)
    roles = {role["name"]: role for role in r.json()}
    assert set(roles) == {"Admin", "Researcher", "Viewer", "Trust Admin"}
    assert roles["Trust Admin"]["trust_scoped"] is True
    assert "CAN_APPROVE_FOR_TRUST" not in roles["Admin"]["permissions"]
    assert roles["Viewer"]["permissions"] == []


async def test_the_last_admin_cannot_be_demoted_or_disabled(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    r = await client.put(f"/api/users/{admin.id}/roles", headers=admin.headers, json={"roles": ["Researcher"]})
    assert r.status_code == 409
    assert r.json()["code"] == "last_admin"
    r = await client.patch(f"/api/users/{admin.id}", headers=admin.headers, json={"enabled": False})
    assert r.status_code == 409
    assert (await client.get("/api/users/me", headers=admin.headers)).json()["permissions"]
    second = await make_user(RoleName.ADMIN)
    r = await client.put(f"/api/users/{admin.id}/roles", headers=second.headers, json={"roles": ["Researcher"]})
    assert r.status_code == 200
    r = await client.patch(f"/api/users/{second.id}", headers=second.headers, json={"enabled": False})
    assert r.status_code == 409
