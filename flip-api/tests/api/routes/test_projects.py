"""Projects: creation, access rules, editing, members, soft delete, lists and their audit trail."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from hub_testing import RegisteredTrust, ready_cohort, register_test_trust
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, Project, ProjectMember, ProjectTrust
from flip_api.services import staging
from flip_api.services.staging import StagingProblem

R = RoleName.RESEARCHER


async def _trust(hub: HubState, code: str) -> RegisteredTrust:
    return await register_test_trust(hub, code)


async def _create(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"Project {uuid.uuid4().hex[:8]}", "has_imaging": False}
    body.update(fields)
    response = await client.post("/api/projects", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


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


def _ids(items: Sequence[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


# --------------------------------------------------------------------------- create


async def test_create_project_returns_it_and_audits(
    client: httpx.AsyncClient, make_user: Any, db: AsyncSession
) -> None:
    owner = await make_user(R)
    viewer = await make_user(RoleName.VIEWER)
    body = await _create(
        client,
        owner.headers,
        name="  Lung nodules  ",
        description="CT cohort",
        has_imaging=True,
        dicom_to_nifti=True,
        member_ids=[str(viewer.id), str(viewer.id)],
    )
    assert body["name"] == "Lung nodules"
    assert body["description"] == "CT cohort"
    assert body["owner_id"] == str(owner.id)
    assert body["owner_email"] == owner.user.email
    assert body["has_imaging"] is True
    assert body["dicom_to_nifti"] is True
    assert body["status"] == "UNSTAGED"
    assert body["staged_at"] is None
    assert body["approved_at"] is None
    assert body["member_ids"] == [str(viewer.id)]
    assert body["trusts"] == []
    assert await _actions(db, body["id"]) == ["project.created"]
    entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "project.created"))
    assert entry is not None
    assert entry.actor_id == str(owner.id)
    assert entry.details["member_ids"] == [str(viewer.id)]


async def test_create_needs_create_permission(client: httpx.AsyncClient, make_user: Any, db: AsyncSession) -> None:
    viewer = await make_user(RoleName.VIEWER)
    response = await client.post("/api/projects", json={"name": "x", "has_imaging": False}, headers=viewer.headers)
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert await db.scalar(select(func.count()).select_from(Project)) == 0


async def test_create_requires_authentication(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/projects", json={"name": "x", "has_imaging": False})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "a"}, "validation_error"),  # has_imaging is required
        ({"name": "a", "has_imaging": "yes"}, "validation_error"),
        ({"name": "a", "has_imaging": 1}, "validation_error"),
        ({"name": 5, "has_imaging": False}, "validation_error"),
        ({"name": "", "has_imaging": False}, "validation_error"),
        ({"name": "   ", "has_imaging": False}, "validation_error"),
        ({"name": "n" * 201, "has_imaging": False}, "validation_error"),
        ({"name": "a", "description": "d" * 5001, "has_imaging": False}, "validation_error"),
        ({"name": "a", "has_imaging": False, "colour": "red"}, "validation_error"),
        ({"name": "a", "has_imaging": False, "member_ids": ["not-a-uuid"]}, "validation_error"),
        ({"name": "a", "has_imaging": False, "dicom_to_nifti": True}, "nifti_without_imaging"),
        ({"name": "a", "has_imaging": False, "member_ids": [str(uuid.uuid4())]}, "unknown_user"),
    ],
)
async def test_create_rejects_bad_input(
    client: httpx.AsyncClient, make_user: Any, db: AsyncSession, body: dict[str, Any], code: str
) -> None:
    owner = await make_user(R)
    response = await client.post("/api/projects", json=body, headers=owner.headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert await db.scalar(select(func.count()).select_from(Project)) == 0
    assert await db.scalar(select(func.count()).where(AuditEntry.action == "project.created")) == 0


async def test_create_accepts_longest_name(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    body = await _create(client, owner.headers, name="n" * 200)
    assert len(body["name"]) == 200


async def test_create_malformed_json_is_400(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    response = await client.post(
        "/api/projects",
        content=b'{"name": "x", "has_imaging": ',
        headers={**owner.headers, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "request body is not valid JSON", "code": "malformed_json"}


async def test_owner_cannot_be_listed_as_member(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    response = await client.post(
        "/api/projects", json={"name": "p", "has_imaging": False, "member_ids": [str(owner.id)]}, headers=owner.headers
    )
    assert response.status_code == 422
    assert response.json()["code"] == "owner_not_member"


async def test_duplicate_name_is_refused_case_insensitively(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    other = await make_user(R)
    await _create(client, owner.headers, name="Brain MRI")
    for name in ("Brain MRI", "brain mri", " BRAIN MRI "):
        response = await client.post("/api/projects", json={"name": name, "has_imaging": False}, headers=other.headers)
        assert response.status_code == 409, name
        assert response.json()["code"] == "duplicate_project_name"


async def test_name_is_free_again_after_delete(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    first = await _create(client, owner.headers, name="Reusable")
    assert (await client.delete(f"/api/projects/{first['id']}", headers=owner.headers)).status_code == 204
    second = await _create(client, owner.headers, name="reusable")
    assert second["id"] != first["id"]


# --------------------------------------------------------------------------- read access


async def test_read_access_rules(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R)
    member = await make_user(RoleName.VIEWER)
    stranger = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    trust = await _trust(hub, "RA1")
    other_trust = await _trust(hub, "RA2")
    trust_admin = await make_user(trust_admin_of=[trust])
    other_trust_admin = await make_user(trust_admin_of=[other_trust])
    project = await _create(client, owner.headers, member_ids=[str(member.id)])
    url = f"/api/projects/{project['id']}"

    for who in (owner, member, admin):
        response = await client.get(url, headers=who.headers)
        assert response.status_code == 200
        assert response.json()["id"] == project["id"]
    for who in (stranger, trust_admin, other_trust_admin):
        response = await client.get(url, headers=who.headers)
        assert response.status_code == 404
        assert response.json()["code"] == "project_not_found"

    await ready_cohort(client, owner.headers, project["id"], trust)
    staged = await client.post(f"{url}/stage", json={"trust_ids": [str(trust.id)]}, headers=owner.headers)
    assert staged.status_code == 200
    # A Trust Admin sees a project once it is staged at their trust, and only then.
    assert (await client.get(url, headers=trust_admin.headers)).status_code == 200
    assert (await client.get(url, headers=other_trust_admin.headers)).status_code == 404
    assert (await client.get(url, headers=stranger.headers)).status_code == 404


async def test_unknown_project_is_404(client: httpx.AsyncClient, make_user: Any) -> None:
    admin = await make_user(RoleName.ADMIN)
    response = await client.get(f"/api/projects/{uuid.uuid4()}", headers=admin.headers)
    assert response.status_code == 404
    assert response.json()["code"] == "project_not_found"


# --------------------------------------------------------------------------- edit


async def test_owner_and_admin_edit_member_cannot(client: httpx.AsyncClient, make_user: Any, db: AsyncSession) -> None:
    owner = await make_user(R)
    member = await make_user(RoleName.VIEWER)
    admin = await make_user(RoleName.ADMIN)
    stranger = await make_user(R)
    project = await _create(client, owner.headers, name="Before", member_ids=[str(member.id)])
    url = f"/api/projects/{project['id']}"

    response = await client.patch(url, json={"name": "After"}, headers=owner.headers)
    assert response.status_code == 200
    assert response.json()["name"] == "After"
    assert response.json()["description"] == ""
    response = await client.patch(url, json={"description": "by admin"}, headers=admin.headers)
    assert response.status_code == 200
    assert response.json()["name"] == "After"
    assert response.json()["description"] == "by admin"

    response = await client.patch(url, json={"name": "Member edit"}, headers=member.headers)
    assert response.status_code == 403
    assert response.json()["code"] == "not_project_owner"
    response = await client.patch(url, json={"name": "Stranger edit"}, headers=stranger.headers)
    assert response.status_code == 404

    assert await _actions(db, project["id"]) == ["project.created", "project.updated", "project.updated"]
    project_row = await db.get(Project, uuid.UUID(project["id"]))
    assert project_row is not None
    assert project_row.name == "After"


async def test_patch_refuses_fixed_and_unknown_fields(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    project = await _create(client, owner.headers, has_imaging=True)
    url = f"/api/projects/{project['id']}"
    for body in ({"has_imaging": False}, {"dicom_to_nifti": True}, {"status": "APPROVED"}, {"owner_id": str(owner.id)}):
        response = await client.patch(url, json=body, headers=owner.headers)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    after = (await client.get(url, headers=owner.headers)).json()
    assert after["has_imaging"] is True
    assert after["dicom_to_nifti"] is False


async def test_patch_without_changes_writes_no_audit(
    client: httpx.AsyncClient, make_user: Any, db: AsyncSession
) -> None:
    owner = await make_user(R)
    project = await _create(client, owner.headers, name="Same")
    response = await client.patch(f"/api/projects/{project['id']}", json={"name": "Same"}, headers=owner.headers)
    assert response.status_code == 200
    assert await _actions(db, project["id"]) == ["project.created"]


async def test_rename_to_taken_name_conflicts(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    await _create(client, owner.headers, name="Taken")
    project = await _create(client, owner.headers, name="Mine")
    url = f"/api/projects/{project['id']}"
    response = await client.patch(url, json={"name": "TAKEN"}, headers=owner.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_project_name"
    # Changing only the case of one's own name is fine.
    response = await client.patch(url, json={"name": "MINE"}, headers=owner.headers)
    assert response.status_code == 200
    assert response.json()["name"] == "MINE"


async def test_only_unstaged_projects_are_editable(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    viewer = await make_user(RoleName.VIEWER)
    member = await make_user(RoleName.VIEWER)
    trust = await _trust(hub, "ED1")
    project = await _create(client, owner.headers, member_ids=[str(member.id)])
    url = f"/api/projects/{project['id']}"
    await ready_cohort(client, owner.headers, project["id"], trust)
    assert (await client.post(f"{url}/stage", json={"trust_ids": [str(trust.id)]}, headers=owner.headers)).is_success

    attempts = [
        client.patch(url, json={"name": "New"}, headers=owner.headers),
        client.post(f"{url}/members", json={"user_id": str(viewer.id)}, headers=owner.headers),
        client.delete(f"{url}/members/{member.id}", headers=owner.headers),
        client.put(f"{url}/query", json={"sql": "SELECT person_id FROM person"}, headers=owner.headers),
        client.post(f"{url}/query/submit", headers=owner.headers),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 409
        assert response.json()["code"] == "project_not_editable"
    assert await _actions(db, project["id"]) == ["project.created", "project.staged"]


# --------------------------------------------------------------------------- members


async def test_members_add_list_remove(client: httpx.AsyncClient, make_user: Any, db: AsyncSession) -> None:
    owner = await make_user(R)
    alice = await make_user(RoleName.VIEWER, email="alice@example.org", name="Alice")
    bob = await make_user(RoleName.VIEWER, email="bob@example.org", name="Bob")
    project = await _create(client, owner.headers)
    url = f"/api/projects/{project['id']}/members"

    response = await client.post(url, json={"user_id": str(bob.id)}, headers=owner.headers)
    assert response.status_code == 200
    assert [m["email"] for m in response.json()] == ["bob@example.org"]
    response = await client.post(url, json={"user_id": str(alice.id)}, headers=owner.headers)
    assert [m["email"] for m in response.json()] == ["alice@example.org", "bob@example.org"]
    assert response.json()[0]["name"] == "Alice"
    # Adding again is a no-op: same answer, no second audit entry.
    again = await client.post(url, json={"user_id": str(alice.id)}, headers=owner.headers)
    assert again.status_code == 200
    assert [m["user_id"] for m in again.json()] == [str(alice.id), str(bob.id)]

    # Members may read the member list but not change it.
    listed = await client.get(url, headers=bob.headers)
    assert listed.status_code == 200
    assert len(listed.json()) == 2
    refused = await client.delete(f"{url}/{alice.id}", headers=bob.headers)
    assert refused.status_code == 403

    assert (await client.delete(f"{url}/{alice.id}", headers=owner.headers)).status_code == 204
    missing = await client.delete(f"{url}/{alice.id}", headers=owner.headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_a_member"
    owner_removal = await client.delete(f"{url}/{owner.id}", headers=owner.headers)
    assert owner_removal.status_code == 404

    assert await _actions(db, project["id"]) == [
        "project.created",
        "project.member_added",
        "project.member_added",
        "project.member_removed",
    ]
    remaining = (await db.scalars(select(ProjectMember.user_id))).all()
    assert remaining == [bob.id]
    # A removed member loses access.
    assert (await client.get(f"/api/projects/{project['id']}", headers=alice.headers)).status_code == 404


async def test_member_add_validation(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    project = await _create(client, owner.headers)
    url = f"/api/projects/{project['id']}/members"
    unknown = await client.post(url, json={"user_id": str(uuid.uuid4())}, headers=owner.headers)
    assert unknown.status_code == 422
    assert unknown.json()["code"] == "unknown_user"
    itself = await client.post(url, json={"user_id": str(owner.id)}, headers=owner.headers)
    assert itself.status_code == 422
    assert itself.json()["code"] == "owner_not_member"
    extra = await client.post(url, json={"user_id": str(owner.id), "role": "x"}, headers=owner.headers)
    assert extra.status_code == 422
    assert extra.json()["code"] == "validation_error"


# --------------------------------------------------------------------------- delete


async def test_soft_delete(client: httpx.AsyncClient, make_user: Any, db: AsyncSession) -> None:
    owner = await make_user(R)
    member = await make_user(RoleName.VIEWER)
    project = await _create(client, owner.headers, member_ids=[str(member.id)])
    url = f"/api/projects/{project['id']}"

    refused = await client.delete(url, headers=member.headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "not_project_owner"

    response = await client.delete(url, headers=owner.headers)
    assert response.status_code == 204
    assert response.content == b""
    again = await client.delete(url, headers=owner.headers)
    assert again.status_code == 404
    assert again.json()["code"] == "project_not_found"
    for who in (owner, member):
        assert (await client.get(url, headers=who.headers)).status_code == 404

    row = await db.get(Project, uuid.UUID(project["id"]))
    assert row is not None
    assert row.deleted_at is not None
    assert await _actions(db, project["id"]) == ["project.created", "project.deleted"]


async def test_admin_may_delete_any_project_stranger_gets_404(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user(R)
    stranger = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    project = await _create(client, owner.headers)
    url = f"/api/projects/{project['id']}"
    assert (await client.delete(url, headers=stranger.headers)).status_code == 404
    assert (await client.delete(url, headers=admin.headers)).status_code == 204


# --------------------------------------------------------------------------- lists


async def test_list_shows_only_visible_projects(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    alice = await make_user(R)
    bob = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    trust = await _trust(hub, "LS1")
    trust_admin = await make_user(trust_admin_of=[trust])
    own = await _create(client, alice.headers, name="Alice own")
    shared = await _create(client, bob.headers, name="Bob shared", member_ids=[str(alice.id)])
    private = await _create(client, bob.headers, name="Bob private")
    deleted = await _create(client, alice.headers, name="Alice deleted")
    await client.delete(f"/api/projects/{deleted['id']}", headers=alice.headers)
    await ready_cohort(client, bob.headers, private["id"], trust)
    await client.post(f"/api/projects/{private['id']}/stage", json={"trust_ids": [str(trust.id)]}, headers=bob.headers)

    page = (await client.get("/api/projects", headers=alice.headers)).json()
    assert page["total"] == 2
    assert _ids(page["items"]) == [shared["id"], own["id"]]  # newest first
    assert page["page"] == 1
    assert page["page_size"] == 50

    everything = (await client.get("/api/projects", headers=admin.headers)).json()
    assert _ids(everything["items"]) == [private["id"], shared["id"], own["id"]]

    at_trust = (await client.get("/api/projects", headers=trust_admin.headers)).json()
    assert _ids(at_trust["items"]) == [private["id"]]
    assert at_trust["items"][0]["trusts"][0]["trust_code"] == "LS1"

    mine = (await client.get("/api/projects", params={"mine": "true"}, headers=admin.headers)).json()
    assert mine["total"] == 0
    mine = (await client.get("/api/projects", params={"mine": "true"}, headers=bob.headers)).json()
    assert _ids(mine["items"]) == [private["id"], shared["id"]]


async def test_list_filters_and_pagination(client: httpx.AsyncClient, make_user: Any, hub: HubState) -> None:
    owner = await make_user(R)
    trust = await _trust(hub, "PG1")
    created = [await _create(client, owner.headers, name=f"Study {i:02d}") for i in range(5)]
    await _create(client, owner.headers, name="Other", description="mentions 100%_done")
    staged = created[1]
    await ready_cohort(client, owner.headers, staged["id"], trust)
    await client.post(f"/api/projects/{staged['id']}/stage", json={"trust_ids": [str(trust.id)]}, headers=owner.headers)

    first = (await client.get("/api/projects", params={"q": "study", "page_size": 2}, headers=owner.headers)).json()
    assert first["total"] == 5
    assert [p["name"] for p in first["items"]] == ["Study 04", "Study 03"]
    third = (
        await client.get("/api/projects", params={"q": "study", "page_size": 2, "page": 3}, headers=owner.headers)
    ).json()
    assert [p["name"] for p in third["items"]] == ["Study 00"]
    beyond = (
        await client.get("/api/projects", params={"q": "study", "page_size": 2, "page": 4}, headers=owner.headers)
    ).json()
    assert beyond["items"] == []
    assert beyond["total"] == 5

    by_status = (await client.get("/api/projects", params={"status": "STAGED"}, headers=owner.headers)).json()
    assert _ids(by_status["items"]) == [staged["id"]]
    assert by_status["items"][0]["status"] == "STAGED"

    # LIKE wildcards in q are literal text.
    literal = (await client.get("/api/projects", params={"q": "100%_"}, headers=owner.headers)).json()
    assert [p["name"] for p in literal["items"]] == ["Other"]
    none = (await client.get("/api/projects", params={"q": "%"}, headers=owner.headers)).json()
    assert none["total"] == 1

    bad = await client.get("/api/projects", params={"status": "DONE"}, headers=owner.headers)
    assert bad.status_code == 422
    bad = await client.get("/api/projects", params={"page_size": 0}, headers=owner.headers)
    assert bad.status_code == 422


# --------------------------------------------------------------------------- staging hook


async def test_registered_staging_check_blocks_staging(
    client: httpx.AsyncClient, make_user: Any, hub: HubState, db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await make_user(R)
    good = await _trust(hub, "HK1")
    bad = await _trust(hub, "HK2")

    async def cohort_usable(db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]) -> list[StagingProblem]:
        return [StagingProblem(bad.id, "cohort_unusable", "count suppressed") for tid in trust_ids if tid == bad.id]

    # The registry's built-in checks plus this one (the real cohort check has its own tests).
    monkeypatch.setattr(staging, "STAGING_CHECKS", [staging.at_least_one_trust, staging.trusts_exist, cohort_usable])
    project = await _create(client, owner.headers)
    url = f"/api/projects/{project['id']}"
    response = await client.post(f"{url}/stage", json={"trust_ids": [str(good.id), str(bad.id)]}, headers=owner.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "staging_precondition_failed"
    assert str(bad.id) in response.json()["detail"]
    assert "cohort_unusable" in response.json()["detail"]
    assert await db.scalar(select(func.count()).select_from(ProjectTrust)) == 0
    assert (await client.get(url, headers=owner.headers)).json()["status"] == "UNSTAGED"

    response = await client.post(f"{url}/stage", json={"trust_ids": [str(good.id)]}, headers=owner.headers)
    assert response.status_code == 200
    assert response.json()["status"] == "STAGED"
