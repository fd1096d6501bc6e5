"""Staging, unstaging and per-trust decisions: the first-approval rule, finality and who decides."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from hub_testing import RegisteredTrust, ready_cohort, register_test_trust
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, ProjectTrust, TrustDecision

R = RoleName.RESEARCHER


async def _trust(hub: HubState, code: str) -> RegisteredTrust:
    return await register_test_trust(hub, code)


async def _project(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> str:
    body: dict[str, Any] = {"name": f"Project {uuid.uuid4().hex[:8]}", "has_imaging": False, **fields}
    response = await client.post("/api/projects", json=body, headers=headers)
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


async def _stage(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: str, *trusts: RegisteredTrust
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{project_id}/stage", json={"trust_ids": [str(t.id) for t in trusts]}, headers=headers
    )


async def _decide(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: str, trust: RegisteredTrust, decision: str
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{project_id}/trusts/{trust.id}/decision", json={"decision": decision}, headers=headers
    )


async def _actions(db: AsyncSession, project_id: str) -> list[str]:
    """The project's lifecycle entries (its cohort entries are checked by the cohort tests)."""
    rows = await db.scalars(
        select(AuditEntry.action)
        .where(
            AuditEntry.subject_type == "project",
            AuditEntry.subject_id == project_id,
            AuditEntry.action.like("project.%"),
        )
        .order_by(AuditEntry.seq)
    )
    return list(rows.all())


async def _get(client: httpx.AsyncClient, headers: dict[str, str], project_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/projects/{project_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --------------------------------------------------------------------------- staging


async def test_stage_creates_pending_decisions(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    managed = await _trust(hub, "MGD")
    unmanaged = await _trust(hub, "UNM")
    await make_user(trust_admin_of=[managed])
    project_id = await _project(client, owner.headers)

    await ready_cohort(client, owner.headers, project_id, managed, unmanaged)
    response = await _stage(client, owner.headers, project_id, managed, unmanaged)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "STAGED"
    assert body["staged_at"] is not None
    assert body["approved_at"] is None
    by_code = {t["trust_code"]: t for t in body["trusts"]}
    assert set(by_code) == {"MGD", "UNM"}
    assert by_code["MGD"]["decision"] == "PENDING"
    assert by_code["MGD"]["decides_as"] == "SITE"
    assert by_code["UNM"]["decides_as"] == "HUB"
    assert by_code["UNM"]["trust_name"] == "Trust UNM"
    assert by_code["UNM"]["decided_by"] is None
    assert by_code["UNM"]["decided_as"] is None

    listed = await client.get(f"/api/projects/{project_id}/trusts", headers=owner.headers)
    assert listed.status_code == 200
    assert [t["trust_code"] for t in listed.json()] == ["MGD", "UNM"]
    assert await _actions(db, project_id) == ["project.created", "project.staged"]
    entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "project.staged"))
    assert entry is not None
    assert sorted(entry.details["trust_ids"]) == sorted([str(managed.id), str(unmanaged.id)])


async def test_stage_rejects_bad_trust_lists_and_writes_nothing(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    trust = await _trust(hub, "ST1")
    project_id = await _project(client, owner.headers)
    url = f"/api/projects/{project_id}/stage"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"trust_ids": []}, 409, "staging_precondition_failed"),
        ({"trust_ids": [str(trust.id), str(trust.id)]}, 422, "duplicate_trust_id"),
        ({"trust_ids": [str(trust.id), str(uuid.uuid4())]}, 409, "staging_precondition_failed"),
        ({"trust_ids": ["nope"]}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"trust_ids": [str(trust.id)], "force": True}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = await client.post(url, json=body, headers=owner.headers)
        assert response.status_code == status, body
        assert response.json()["code"] == code, body
    unknown = await client.post(url, json={"trust_ids": [str(uuid.uuid4())]}, headers=owner.headers)
    assert "unknown_trust" in unknown.json()["detail"]
    assert await db.scalar(select(func.count()).select_from(ProjectTrust)) == 0
    assert (await _get(client, owner.headers, project_id))["status"] == "UNSTAGED"
    assert await _actions(db, project_id) == ["project.created"]


async def test_stage_permissions_and_state(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R)
    member = await make_user(RoleName.VIEWER)
    stranger = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    trust = await _trust(hub, "SP1")
    project_id = await _project(client, owner.headers, member_ids=[str(member.id)])
    await ready_cohort(client, owner.headers, project_id, trust)

    refused = await _stage(client, member.headers, project_id, trust)
    assert refused.status_code == 403
    assert refused.json()["code"] == "not_project_owner"
    assert (await _stage(client, stranger.headers, project_id, trust)).status_code == 404
    assert (await _stage(client, admin.headers, project_id, trust)).status_code == 200
    again = await _stage(client, owner.headers, project_id, trust)
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_transition"


# --------------------------------------------------------------------------- unstaging


async def test_unstage_returns_to_unstaged_and_drops_decisions(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    a = await _trust(hub, "UN1")
    b = await _trust(hub, "UN2")
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, a, b)
    await _stage(client, owner.headers, project_id, a, b)
    assert (await _decide(client, admin.headers, project_id, a, "DECLINED")).status_code == 200

    refused = await client.post(f"/api/projects/{project_id}/unstage", headers=owner.headers)
    assert refused.status_code == 403
    response = await client.post(f"/api/projects/{project_id}/unstage", headers=admin.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "UNSTAGED"
    assert body["staged_at"] is None
    assert body["trusts"] == []
    assert await db.scalar(select(func.count()).select_from(ProjectTrust)) == 0

    again = await client.post(f"/api/projects/{project_id}/unstage", headers=admin.headers)
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_transition"
    # Editable again, and can be restaged from scratch.
    patched = await client.patch(f"/api/projects/{project_id}", json={"description": "v2"}, headers=owner.headers)
    assert patched.status_code == 200
    restaged = await _stage(client, owner.headers, project_id, b)
    assert [t["decision"] for t in restaged.json()["trusts"]] == ["PENDING"]
    assert await _actions(db, project_id) == [
        "project.created",
        "project.staged",
        "project.trust_declined",
        "project.unstaged",
        "project.updated",
        "project.staged",
    ]


async def test_approved_project_cannot_be_unstaged(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    trust = await _trust(hub, "AP1")
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, trust)
    await _stage(client, owner.headers, project_id, trust)
    assert (await _decide(client, admin.headers, project_id, trust, "APPROVED")).status_code == 200
    response = await client.post(f"/api/projects/{project_id}/unstage", headers=admin.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"
    assert (await _get(client, owner.headers, project_id))["status"] == "APPROVED"


# --------------------------------------------------------------------------- the first-approval rule


async def test_first_approval_approves_and_later_trusts_join(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    site = await _trust(hub, "FA1")
    hub_decided = await _trust(hub, "FA2")
    decliner = await _trust(hub, "FA3")
    site_admin = await make_user(trust_admin_of=[site])
    decliner_admin = await make_user(trust_admin_of=[decliner])
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, site, hub_decided, decliner)
    await _stage(client, owner.headers, project_id, site, hub_decided, decliner)

    first = await _decide(client, site_admin.headers, project_id, site, "APPROVED")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["project_status"] == "APPROVED"
    assert body["decision"] == "APPROVED"
    assert body["decided_as"] == "SITE"
    assert body["decided_by"] == str(site_admin.id)
    assert body["changed"] is True
    approved_at = body["approved_at"]
    assert approved_at is not None

    later = await _decide(client, admin.headers, project_id, hub_decided, "APPROVED")
    assert later.status_code == 200
    assert later.json()["project_status"] == "APPROVED"
    assert later.json()["decided_as"] == "HUB"
    assert later.json()["approved_at"] == approved_at  # joining does not move the approval time

    declined = await _decide(client, decliner_admin.headers, project_id, decliner, "DECLINED")
    assert declined.status_code == 200
    assert declined.json()["project_status"] == "APPROVED"

    project = await _get(client, owner.headers, project_id)
    assert project["status"] == "APPROVED"
    decisions = {t["trust_code"]: (t["decision"], t["decided_as"]) for t in project["trusts"]}
    assert decisions == {"FA1": ("APPROVED", "SITE"), "FA2": ("APPROVED", "HUB"), "FA3": ("DECLINED", "SITE")}
    assert await _actions(db, project_id) == [
        "project.created",
        "project.staged",
        "project.trust_approved",
        "project.approved",
        "project.trust_joined",
        "project.trust_approved",
        "project.trust_joined",
        "project.trust_declined",
    ]
    joined = (
        await db.scalars(select(AuditEntry).where(AuditEntry.action == "project.trust_joined").order_by(AuditEntry.seq))
    ).all()
    assert [e.details["trust_code"] for e in joined] == ["FA1", "FA2"]
    assert joined[1].actor_id == str(admin.id)


async def test_all_declined_stays_staged(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    a = await _trust(hub, "DC1")
    b = await _trust(hub, "DC2")
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, a, b)
    await _stage(client, owner.headers, project_id, a, b)
    for trust in (a, b):
        response = await _decide(client, admin.headers, project_id, trust, "DECLINED")
        assert response.status_code == 200
        assert response.json()["project_status"] == "STAGED"
    project = await _get(client, owner.headers, project_id)
    assert project["status"] == "STAGED"
    assert project["approved_at"] is None
    assert [t["decision"] for t in project["trusts"]] == ["DECLINED", "DECLINED"]
    assert "project.approved" not in await _actions(db, project_id)


async def test_concurrent_approvals_approve_once(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    trusts = [await _trust(hub, f"CC{i}") for i in range(4)]
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, *trusts)
    await _stage(client, owner.headers, project_id, *trusts)
    responses = await asyncio.gather(*(_decide(client, admin.headers, project_id, t, "APPROVED") for t in trusts))
    assert [r.status_code for r in responses] == [200] * 4
    actions = await _actions(db, project_id)
    assert actions.count("project.approved") == 1
    assert actions.count("project.trust_joined") == 4
    approved_at = {r.json()["approved_at"] for r in responses}
    assert len(approved_at) == 1


# --------------------------------------------------------------------------- finality and idempotency


async def test_decision_is_final_and_repeat_is_idempotent(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    trust = await _trust(hub, "FN1")
    trust_admin = await make_user(trust_admin_of=[trust])
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, trust)
    await _stage(client, owner.headers, project_id, trust)

    first = await _decide(client, trust_admin.headers, project_id, trust, "APPROVED")
    assert first.status_code == 200
    audit_count = await db.scalar(select(func.count()).select_from(AuditEntry))

    repeat = await _decide(client, trust_admin.headers, project_id, trust, "APPROVED")
    assert repeat.status_code == 200
    assert repeat.json()["changed"] is False
    assert repeat.json()["decided_at"] == first.json()["decided_at"]
    assert repeat.json()["decision"] == "APPROVED"
    assert await db.scalar(select(func.count()).select_from(AuditEntry)) == audit_count

    change = await _decide(client, trust_admin.headers, project_id, trust, "DECLINED")
    assert change.status_code == 409
    assert change.json()["code"] == "decision_final"
    row = await db.scalar(select(ProjectTrust))
    assert row is not None
    assert row.decision.value == "APPROVED"


async def test_decision_body_is_validated(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    trust = await _trust(hub, "BV1")
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, trust)
    await _stage(client, owner.headers, project_id, trust)
    for decision in ("PENDING", "approved", "MAYBE"):
        response = await _decide(client, admin.headers, project_id, trust, decision)
        assert response.status_code == 422, decision
        assert response.json()["code"] == "validation_error"


async def test_decide_on_unstaged_project_conflicts(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    trust = await _trust(hub, "US1")
    project_id = await _project(client, owner.headers)
    response = await _decide(client, admin.headers, project_id, trust, "APPROVED")
    assert response.status_code == 409
    assert response.json()["code"] == "project_not_staged"


# --------------------------------------------------------------------------- who decides


async def test_decision_authority(client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession) -> None:
    owner = await make_user(R)
    stranger = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    a = await _trust(hub, "AU1")
    b = await _trust(hub, "AU2")
    unmanaged = await _trust(hub, "AU3")
    elsewhere = await _trust(hub, "AU4")
    admin_a = await make_user(trust_admin_of=[a])
    await make_user(trust_admin_of=[b])
    admin_elsewhere = await make_user(trust_admin_of=[elsewhere])
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, a, b, unmanaged)
    await _stage(client, owner.headers, project_id, a, b, unmanaged)

    refusals = [
        (admin, a),  # hub admin, but the trust has Trust Admins
        (admin_a, b),  # Trust Admin of another trust
        (admin_a, unmanaged),  # Trust Admins never decide for the hub
        (owner, a),
        (owner, unmanaged),
    ]
    for who, trust in refusals:
        response = await _decide(client, who.headers, project_id, trust, "APPROVED")
        assert response.status_code == 403, (who.user.email, trust.code)
        assert response.json()["code"] == "not_trust_authority"
    hidden = await _decide(client, stranger.headers, project_id, a, "APPROVED")
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "project_not_found"
    # A Trust Admin of a trust the project is not staged at cannot even see it.
    hidden = await _decide(client, admin_elsewhere.headers, project_id, elsewhere, "APPROVED")
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "project_not_found"
    not_staged = await _decide(client, admin.headers, project_id, elsewhere, "APPROVED")
    assert not_staged.status_code == 404
    assert not_staged.json()["code"] == "trust_not_staged"
    unknown = await _decide(client, admin.headers, str(uuid.uuid4()), a, "APPROVED")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "project_not_found"

    assert (await db.scalars(select(ProjectTrust.decision).distinct())).all() == [TrustDecision.PENDING]
    assert await _actions(db, project_id) == ["project.created", "project.staged"]

    assert (await _decide(client, admin.headers, project_id, unmanaged, "DECLINED")).json()["decided_as"] == "HUB"
    assert (await _decide(client, admin_a.headers, project_id, a, "APPROVED")).json()["decided_as"] == "SITE"


# --------------------------------------------------------------------------- a trust's decision list


async def test_trust_decision_list(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R, email="owner@example.org")
    admin = await make_user(RoleName.ADMIN)
    site = await _trust(hub, "MY1")
    other = await _trust(hub, "MY2")
    unmanaged = await _trust(hub, "MY3")
    site_admin = await make_user(trust_admin_of=[site])
    other_admin = await make_user(trust_admin_of=[other])
    decided = await _project(client, owner.headers, name="Decided", description="first")
    pending_old = await _project(client, owner.headers, name="Pending old")
    pending_new = await _project(client, owner.headers, name="Pending new")
    gone = await _project(client, owner.headers, name="Gone")
    elsewhere = await _project(client, owner.headers, name="Elsewhere")
    for project_id in (decided, pending_old, pending_new, gone):
        await ready_cohort(client, owner.headers, project_id, site, unmanaged)
        assert (await _stage(client, owner.headers, project_id, site, unmanaged)).status_code == 200
    await ready_cohort(client, owner.headers, elsewhere, other)
    await _stage(client, owner.headers, elsewhere, other)
    await _decide(client, site_admin.headers, decided, site, "DECLINED")
    await client.delete(f"/api/projects/{gone}", headers=owner.headers)

    url = f"/api/trusts/{site.id}/decisions"
    response = await client.get(url, headers=site_admin.headers)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == 3
    assert [i["project_name"] for i in page["items"]] == ["Pending old", "Pending new", "Decided"]
    last = page["items"][2]
    assert last["decision"] == "DECLINED"
    assert last["decided_as"] == "SITE"
    assert last["decided_by"] == str(site_admin.id)
    assert last["owner_email"] == "owner@example.org"
    assert last["description"] == "first"
    assert last["project_status"] == "STAGED"
    assert page["items"][0]["decision"] == "PENDING"
    assert page["items"][0]["staged_at"] is not None

    pending = (await client.get(url, params={"decision": "PENDING"}, headers=site_admin.headers)).json()
    assert [i["project_name"] for i in pending["items"]] == ["Pending old", "Pending new"]
    paged = (await client.get(url, params={"page_size": 1, "page": 2}, headers=site_admin.headers)).json()
    assert [i["project_name"] for i in paged["items"]] == ["Pending new"]
    assert paged["total"] == 3

    for who in (admin, other_admin, owner):
        refused = await client.get(url, headers=who.headers)
        assert refused.status_code == 403
        assert refused.json()["code"] == "not_trust_authority"
    hub_view = await client.get(f"/api/trusts/{unmanaged.id}/decisions", headers=admin.headers)
    assert hub_view.status_code == 200
    assert hub_view.json()["total"] == 3
    assert (await client.get(f"/api/trusts/{unmanaged.id}/decisions", headers=site_admin.headers)).status_code == 403
    other_view = (await client.get(f"/api/trusts/{other.id}/decisions", headers=other_admin.headers)).json()
    assert [i["project_name"] for i in other_view["items"]] == ["Elsewhere"]
    missing = await client.get(f"/api/trusts/{uuid.uuid4()}/decisions", headers=admin.headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "trust_not_found"


async def test_project_trusts_view_is_read_protected(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R)
    stranger = await make_user(R)
    trust = await _trust(hub, "PV1")
    trust_admin = await make_user(trust_admin_of=[trust])
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, trust)
    await _stage(client, owner.headers, project_id, trust)
    assert (await client.get(f"/api/projects/{project_id}/trusts", headers=stranger.headers)).status_code == 404
    seen = await client.get(f"/api/projects/{project_id}/trusts", headers=trust_admin.headers)
    assert seen.status_code == 200
    assert seen.json()[0]["decides_as"] == "SITE"
    assert seen.json()[0]["trust_id"] == str(trust.id)
