"""The hub's side of imaging: the import queued at approval, gated statuses, refresh, re-import and deletion.

The trust side is played through the real machine routes with each trust's own key, as in the cohort
tests: lease the task, open its payload, post an answer built from the flip-core contract models.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hub_testing
import pytest
from hub_testing import (
    MakeUser,
    RegisteredTrust,
    gated,
    imaging_status,
    lease_as,
    post_result,
    ready_cohort,
    register_test_trust,
)
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.config import HubSettings
from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, ImagingImport, Project, Trust, TrustTask
from flip_api.db.session import transaction
from flip_api.services import projects
from flip_api.services.audit import Actor
from flip_api.worker import run_once
from flip_core.cohort import DEFAULT_MIN_K, CohortSnapshotInfo, PersistCohortPayload
from flip_core.imaging import CreateImagingPayload, ImagingProjectPayload
from flip_core.tasks import TaskStatus, TaskType

R = RoleName.RESEARCHER
SECRET = 7531  # an ungated count that must appear nowhere on the hub


@pytest.fixture
def settings(settings: HubSettings) -> HubSettings:
    """These tests tick the worker themselves, so that what it queues is deterministic."""
    settings.worker_in_process = False
    return settings


# --------------------------------------------------------------------------- helpers


async def _trusts(hub: HubState, *codes: str) -> list[RegisteredTrust]:
    return [await register_test_trust(hub, code) for code in codes]


async def _staged_project(
    client: httpx.AsyncClient,
    owner: hub_testing.TestUser,
    *trusts: RegisteredTrust,
    has_imaging: bool = True,
    **fields: Any,
) -> str:
    body = {"name": f"Imaging {uuid.uuid4().hex[:8]}", "has_imaging": has_imaging, "dicom_to_nifti": has_imaging}
    r = await client.post("/api/projects", json={**body, **fields}, headers=owner.headers)
    assert r.status_code == 201, r.text
    project_id: str = r.json()["id"]
    await ready_cohort(client, owner.headers, project_id, *trusts)
    r = await client.post(
        f"/api/projects/{project_id}/stage", json={"trust_ids": [str(t.id) for t in trusts]}, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    return project_id


async def _decide(
    client: httpx.AsyncClient,
    admin: hub_testing.TestUser,
    project_id: str,
    trust: RegisteredTrust,
    decision: str = "APPROVED",
) -> None:
    r = await client.post(
        f"/api/projects/{project_id}/trusts/{trust.id}/decision", json={"decision": decision}, headers=admin.headers
    )
    assert r.status_code == 200, r.text


async def _freeze(client: httpx.AsyncClient, trust: RegisteredTrust, task: dict[str, Any] | None = None) -> None:
    """Act as the trust: complete its persist_cohort task with a snapshot of the cohort."""
    if task is None:
        (task,) = await lease_as(client, trust, TaskType.PERSIST_COHORT)
    payload = PersistCohortPayload.model_validate(trust.open(task))
    info = CohortSnapshotInfo(
        project_id=payload.project_id,
        query_id=payload.query_id,
        persons=gated(42),
        rows=gated(120),
        k=DEFAULT_MIN_K,
        columns=["person_id", "accession_id"],
        sha256="cd" * 32,
        created_at=datetime.now(UTC),
    )
    r = await post_result(client, trust, task, info.model_dump(mode="json"))
    assert r.json()["status"] == "COMPLETED", r.text


async def _answer(
    client: httpx.AsyncClient, trust: RegisteredTrust, task: dict[str, Any], result: dict[str, Any]
) -> str:
    r = await post_result(client, trust, task, result)
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


async def _imported(
    client: httpx.AsyncClient, trust: RegisteredTrust, project_id: str, **status: Any
) -> dict[str, Any]:
    """Freeze the trust's cohort and answer its create_imaging; returns the leased create task."""
    await _freeze(client, trust)
    (task,) = await lease_as(client, trust, TaskType.CREATE_IMAGING)
    assert await _answer(client, trust, task, imaging_status(project_id, **status)) == "COMPLETED"
    return task


async def _view(client: httpx.AsyncClient, headers: dict[str, str], project_id: str) -> dict[str, dict[str, Any]]:
    r = await client.get(f"/api/projects/{project_id}/imaging", headers=headers)
    assert r.status_code == 200, r.text
    return {t["trust_code"]: t for t in r.json()["trusts"]}


async def _imaging_tasks(db: AsyncSession, project_id: str, *types: TaskType) -> list[TrustTask]:
    stmt = (
        select(TrustTask)
        .where(TrustTask.subject_type == "imaging", TrustTask.subject_id == project_id)
        .order_by(TrustTask.created_at, TrustTask.id)
        .execution_options(populate_existing=True)
    )
    if types:
        stmt = stmt.where(TrustTask.type.in_([t.value for t in types]))
    return list((await db.scalars(stmt)).all())


async def _imaging_actions(db: AsyncSession, project_id: str) -> list[str]:
    rows = await db.scalars(
        select(AuditEntry.action)
        .where(AuditEntry.subject_id == project_id, AuditEntry.action.like("imaging.%"))
        .order_by(AuditEntry.seq)
    )
    return list(rows.all())


async def _backdate(hub: HubState, project_id: str, seconds: float) -> None:
    """Pretend the last status request and answer for the project's imports were ``seconds`` ago."""
    past = datetime.now(UTC) - timedelta(seconds=seconds)
    async with transaction(hub.sessions) as s:
        await s.execute(
            update(ImagingImport)
            .where(ImagingImport.project_id == uuid.UUID(project_id))
            .values(received_at=past, refresh_requested_at=past)
        )


async def _refreshes(hub: HubState) -> int:
    report = await run_once(hub)
    assert report is not None
    return report.imaging_refreshes


# --------------------------------------------------------------------------- approval queues the import


async def test_approval_queues_the_import_behind_the_cohort_freeze(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    scans, plain_trust = await _trusts(hub, "IMG", "PLN")
    project_id = await _staged_project(client, owner, scans)
    plain = await _staged_project(client, owner, plain_trust, has_imaging=False)
    before = await _view(client, owner.headers, project_id)
    assert before == {}  # nobody approved yet
    await _decide(client, admin, project_id, scans)
    await _decide(client, admin, plain, plain_trust)

    freezes = (await db.scalars(select(TrustTask).where(TrustTask.type == TaskType.PERSIST_COHORT.value))).all()
    assert sorted(t.trust_id for t in freezes) == sorted([scans.id, plain_trust.id])
    (create,) = await _imaging_tasks(db, project_id)
    freeze = next(t for t in freezes if t.trust_id == scans.id)
    assert create.type == TaskType.CREATE_IMAGING.value
    assert create.trust_id == scans.id
    assert create.depends_on == freeze.id
    assert await _imaging_tasks(db, plain) == []  # a project without imaging imports nothing

    # Only the freeze is handed out: the import waits for the frozen cohort.
    leased = await lease_as(client, scans)
    assert [t["type"] for t in leased] == [TaskType.PERSIST_COHORT.value]
    waiting = (await _view(client, owner.headers, project_id))["IMG"]
    assert waiting["requested"] is True
    assert waiting["status"] is None
    assert waiting["pending"] is True
    assert [(t["type"], t["state"]) for t in waiting["pending_tasks"]] == [("create_imaging", "queued")]
    assert waiting["trust_status"] == "online"  # the lease proved it alive
    assert waiting["stale"] is False

    await _freeze(client, scans, leased[0])
    (task,) = await lease_as(client, scans)
    assert task["type"] == TaskType.CREATE_IMAGING.value
    payload = CreateImagingPayload.model_validate(scans.open(task))
    assert payload.project_id == uuid.UUID(project_id)
    assert str(payload.query_id) == freeze.subject_id  # the frozen query of record
    assert payload.dicom_to_nifti is True
    assert payload.min_k == DEFAULT_MIN_K
    running = (await _view(client, owner.headers, project_id))["IMG"]
    assert [(t["type"], t["state"]) for t in running["pending_tasks"]] == [("create_imaging", "running")]

    assert await _answer(client, scans, task, imaging_status(project_id, ready=30, running=12)) == "COMPLETED"
    entry = (await _view(client, owner.headers, project_id))["IMG"]
    assert entry["status"]["by_state"]["READY"] == {"value": 30, "suppressed": False}
    assert entry["status"]["by_state"]["FAILED"] == {"value": None, "suppressed": True}
    assert entry["status"]["studies"] == {"value": 42, "suppressed": False}
    assert entry["status"]["complete"] is False
    assert entry["task_id"] == task["id"]
    assert entry["reported_at"] is not None
    assert entry["received_at"] is not None
    assert entry["pending"] is False
    assert entry["last_error"] is None
    assert await _imaging_actions(db, project_id) == ["imaging.import_requested", "imaging.status_recorded"]
    requested = await db.scalar(select(AuditEntry).where(AuditEntry.action == "imaging.import_requested"))
    assert requested is not None
    assert requested.details["depends_on"] == str(freeze.id)

    refused = await client.get(f"/api/projects/{plain}/imaging", headers=owner.headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "project_without_imaging"


async def test_a_failed_freeze_cancels_the_import_and_says_why(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    (trust,) = await _trusts(hub, "SML")
    project_id = await _staged_project(client, owner, trust)
    await _decide(client, admin, project_id, trust)
    (task,) = await lease_as(client, trust)
    r = await post_result(client, trust, task, outcome="failed", error={"code": "below_threshold"})
    assert r.json()["status"] == "FAILED"

    (create,) = await _imaging_tasks(db, project_id)
    assert create.status is TaskStatus.CANCELLED
    entry = (await _view(client, owner.headers, project_id))["SML"]
    assert entry["status"] is None
    assert entry["pending"] is False
    assert entry["last_error"]["code"] == "dependency_failed"
    assert entry["last_error"]["task_type"] == "create_imaging"
    assert await _imaging_actions(db, project_id) == ["imaging.import_requested", "imaging.task_failed"]
    await _backdate(hub, project_id, 3600)
    assert await _refreshes(hub) == 0  # nothing was imported: there is no status to ask for


async def test_without_a_query_of_record_nothing_is_imported(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    (trust,) = await _trusts(hub, "OLD")
    r = await client.post("/api/projects", json={"name": "Before cohorts", "has_imaging": True}, headers=owner.headers)
    project_id = uuid.UUID(r.json()["id"])
    # A project approved before cohort queries existed has no frozen cohort to take accession ids from.
    async with transaction(hub.sessions) as s:
        project = await s.get(Project, project_id)
        assert project is not None
        await projects.on_trust_approved(s, hub, project, trust.trust, actor=Actor.system("test"))
    assert await _imaging_tasks(db, str(project_id)) == []
    assert await _imaging_actions(db, str(project_id)) == ["imaging.import_skipped"]
    skipped = await db.scalar(select(AuditEntry).where(AuditEntry.action == "imaging.import_skipped"))
    assert skipped is not None
    assert skipped.details == {"trust_id": str(trust.id), "reason": "no_cohort_snapshot"}


# --------------------------------------------------------------------------- answers


async def test_an_older_status_never_replaces_a_newer_one(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    (trust,) = await _trusts(hub, "OOO")
    project_id = await _staged_project(client, owner, trust)
    await _decide(client, admin, project_id, trust)
    now = datetime.now(UTC)
    await _imported(client, trust, project_id, updated_at=now - timedelta(seconds=60), ready=20)
    url = f"/api/projects/{project_id}/imaging/reimport"
    for _ in range(2):
        r = await client.post(url, headers=owner.headers)
        assert r.status_code == 202, r.text
    first, second = await lease_as(client, trust)

    newer = imaging_status(project_id, updated_at=now - timedelta(seconds=10), ready=50)
    older = imaging_status(project_id, updated_at=now - timedelta(seconds=30), ready=40)
    assert await _answer(client, trust, second, newer) == "COMPLETED"
    assert await _answer(client, trust, first, older) == "COMPLETED"  # a valid answer, just late

    entry = (await _view(client, owner.headers, project_id))["OOO"]
    assert entry["status"]["by_state"]["READY"]["value"] == 50
    assert entry["task_id"] == second["id"]
    assert datetime.fromisoformat(entry["reported_at"]) == now - timedelta(seconds=10)
    row = await db.scalar(select(ImagingImport).execution_options(populate_existing=True))
    assert row is not None
    assert row.task_id == uuid.UUID(second["id"])
    assert await _imaging_actions(db, project_id) == [
        "imaging.import_requested",
        "imaging.status_recorded",
        "imaging.reimport_requested",
        "imaging.reimport_requested",
        "imaging.status_recorded",  # the newer one; the late older one is not recorded
    ]


async def test_an_ungated_or_foreign_answer_fails_and_stores_nothing(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    hub: HubState,
    db: AsyncSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    (trust,) = await _trusts(hub, "BAD")
    project_id = await _staged_project(client, owner, trust)
    await _decide(client, admin, project_id, trust)
    await _freeze(client, trust)

    def answer(**changes: Any) -> dict[str, Any]:
        return {**imaging_status(project_id), **changes}

    good = imaging_status(project_id)
    bad_answers = [
        {**good, f"persons_{SECRET}": SECRET},  # a field the contract does not have
        answer(k=5),  # a lower threshold than the hub asked for
        imaging_status(project_id, ready=3),  # released under k
        answer(studies={"value": SECRET, "suppressed": True}),  # suppressed, yet with a value
        answer(studies=SECRET),  # a bare number where a gated count belongs
        imaging_status(uuid.uuid4()),  # another project's status
        answer(updated_at=(datetime.now(UTC) + timedelta(hours=2)).isoformat()),  # a clock far ahead
        answer(updated_at="2026-11-23T12:00:00"),  # no time zone: cannot be ordered
    ]
    # The import and a re-import per remaining answer, all leased by the trust.
    for _ in bad_answers[1:]:
        r = await client.post(f"/api/projects/{project_id}/imaging/reimport", headers=owner.headers)
        assert r.status_code == 202
    leased = await lease_as(client, trust)
    assert len(leased) == len(bad_answers)
    details = []
    for task, result in zip(leased, bad_answers, strict=True):
        r = await post_result(client, trust, task, result)
        assert r.json()["status"] == "FAILED", result
        entry = (await _view(client, owner.headers, project_id))["BAD"]
        assert entry["last_error"]["code"] == "invalid_result"
        details.append(entry["last_error"]["detail"])
    assert "k=5" in details[1]
    assert "below the threshold" in details[2]
    assert "asked about project" in details[5]
    assert "future" in details[6]

    entry = (await _view(client, owner.headers, project_id))["BAD"]
    assert entry["status"] is None
    assert entry["reported_at"] is None
    tasks = await _imaging_tasks(db, project_id)
    assert all(t.result is None for t in tasks)
    stored = " ".join(
        [str(t.error) for t in tasks]
        + [str(e.details) for e in (await db.scalars(select(AuditEntry))).all()]
        + [str(r.error_detail) for r in (await db.scalars(select(ImagingImport))).all()]
    )
    assert str(SECRET) not in stored

    # The hub's threshold travels with each request, and an answer must meet the one it was asked for.
    monkeypatch.setattr(hub.settings, "cohort_min_k", 25)
    r = await client.post(f"/api/projects/{project_id}/imaging/reimport", headers=owner.headers)
    assert r.status_code == 202
    (task,) = await lease_as(client, trust)
    assert ImagingProjectPayload.model_validate(trust.open(task)).min_k == 25
    assert await _answer(client, trust, task, imaging_status(project_id)) == "FAILED"
    r = await client.post(f"/api/projects/{project_id}/imaging/reimport", headers=owner.headers)
    assert r.status_code == 202
    (task,) = await lease_as(client, trust)
    assert await _answer(client, trust, task, imaging_status(project_id, k=25)) == "COMPLETED"
    entry = (await _view(client, owner.headers, project_id))["BAD"]
    assert entry["status"]["k"] == 25
    assert entry["last_error"] is None  # an answer clears the last error


# --------------------------------------------------------------------------- refresh


async def test_refresh_asks_once_at_a_time_and_stops_when_complete(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    running, waiting = await _trusts(hub, "RUN", "WAI")
    project_id = await _staged_project(client, owner, running, waiting)
    await _decide(client, admin, project_id, running)
    await _decide(client, admin, project_id, waiting)
    await _imported(client, running, project_id, running=12)

    assert await _refreshes(hub) == 0  # just heard from it
    await _backdate(hub, project_id, 120)
    assert await _refreshes(hub) == 1  # RUN only: WAI's import has not started
    assert await _refreshes(hub) == 0
    await _backdate(hub, project_id, 120)
    assert await _refreshes(hub) == 0  # the request is still waiting at the trust
    (request,) = await _imaging_tasks(db, project_id, TaskType.GET_IMAGING_STATUS)
    assert request.trust_id == running.id
    entry = (await _view(client, owner.headers, project_id))["RUN"]
    assert [(t["type"], t["state"]) for t in entry["pending_tasks"]] == [("get_imaging_status", "queued")]

    (task,) = await lease_as(client, running, TaskType.GET_IMAGING_STATUS)
    payload = ImagingProjectPayload.model_validate(running.open(task))
    assert payload == ImagingProjectPayload(project_id=uuid.UUID(project_id), min_k=DEFAULT_MIN_K)
    assert await _answer(client, running, task, imaging_status(project_id, ready=40, complete=True)) == "COMPLETED"
    await _backdate(hub, project_id, 3600)
    assert await _refreshes(hub) == 0  # complete: nothing more to ask
    assert len(await _imaging_tasks(db, project_id, TaskType.GET_IMAGING_STATUS)) == 1
    entry = (await _view(client, owner.headers, project_id))["RUN"]
    assert entry["status"]["complete"] is True
    assert entry["stale"] is False  # a final status does not age

    # An import whose create_imaging completed but whose status is gone is asked again.
    async with transaction(hub.sessions) as s:
        await s.execute(
            update(ImagingImport).where(ImagingImport.trust_id == running.id).values(status=None, reported_at=None)
        )
    assert await _refreshes(hub) == 1


# --------------------------------------------------------------------------- re-import and delete


async def test_reimport_and_delete_permissions_and_conflicts(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    member = await make_user(RoleName.VIEWER)
    stranger = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    a, b, declined = await _trusts(hub, "PA", "PB", "PD")
    project_id = await _staged_project(client, owner, a, b, declined, member_ids=[str(member.id)])
    await _decide(client, admin, project_id, a)
    await _decide(client, admin, project_id, b)
    await _decide(client, admin, project_id, declined, "DECLINED")
    reimport = f"/api/projects/{project_id}/imaging/reimport"
    images = f"/api/projects/{project_id}/imaging"

    assert (await client.get(images, headers=member.headers)).status_code == 200  # readers see the status
    hidden = await client.get(images, headers=stranger.headers)
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "project_not_found"
    for method, url in (("POST", reimport), ("DELETE", images)):
        refused = await client.request(method, url, headers=member.headers)
        assert refused.status_code == 403, method
        assert refused.json()["code"] == "not_project_owner"
        hidden = await client.request(method, url, headers=stranger.headers)
        assert hidden.status_code == 404, method
        assert hidden.json()["code"] == "project_not_found"

    everywhere = await client.post(reimport, headers=owner.headers)
    assert everywhere.status_code == 202, everywhere.text
    body = everywhere.json()
    assert body["project_id"] == project_id
    assert sorted((t["trust_code"], t["type"], t["status"]) for t in body["tasks"]) == [
        ("PA", "reimport_studies", "PENDING"),
        ("PB", "reimport_studies", "PENDING"),
    ]
    one = await client.post(reimport, json={"trust_ids": [str(b.id)]}, headers=admin.headers)
    assert one.status_code == 202
    assert [t["trust_id"] for t in one.json()["tasks"]] == [str(b.id)]
    for trust_ids, status, code in (
        ([str(declined.id)], 409, "trust_not_approved"),
        ([str(a.id), str(uuid.uuid4())], 409, "trust_not_approved"),
        ([], 422, "validation_error"),
        (["nope"], 422, "validation_error"),
    ):
        r = await client.post(reimport, json={"trust_ids": trust_ids}, headers=owner.headers)
        assert r.status_code == status, trust_ids
        assert r.json()["code"] == code, trust_ids
    extra = await client.post(reimport, json={"trust_ids": None, "force": True}, headers=owner.headers)
    assert extra.status_code == 422

    # Deleting at one trust withdraws the imaging work still waiting there, and only there.
    waiting_at_a = {t.id for t in await _imaging_tasks(db, project_id) if t.trust_id == a.id}
    assert len(waiting_at_a) == 2  # the import (behind its freeze) and a re-import
    refused = await client.delete(images, params={"trust_id": str(declined.id)}, headers=owner.headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "trust_not_approved"
    deleted = await client.delete(images, params={"trust_id": str(a.id)}, headers=owner.headers)
    assert deleted.status_code == 202, deleted.text
    (queued,) = deleted.json()["tasks"]
    assert (queued["trust_code"], queued["type"]) == ("PA", "delete_imaging")
    tasks = {t.id: t for t in await _imaging_tasks(db, project_id)}
    assert {tasks[t].status for t in waiting_at_a} == {TaskStatus.CANCELLED}
    assert {t.status for t in tasks.values() if t.trust_id == b.id} == {TaskStatus.PENDING}
    view = await _view(client, owner.headers, project_id)
    assert view["PA"]["last_error"] is None  # withdrawn by the hub, not failed at the trust
    assert [t["type"] for t in view["PA"]["pending_tasks"]] == ["delete_imaging"]
    assert set(view) == {"PA", "PB"}  # approving trusts only
    entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "imaging.delete_requested"))
    assert entry is not None
    assert sorted(entry.details["cancelled_tasks"]) == sorted(str(t) for t in waiting_at_a)
    assert (await _imaging_actions(db, project_id)).count("imaging.reimport_requested") == 3

    # A project without imaging, or not approved yet, has nothing to re-import or delete.
    plain = await _staged_project(client, owner, a, has_imaging=False)
    await _decide(client, admin, plain, a)
    staged = await _staged_project(client, owner, b)
    for url, code in (
        (f"/api/projects/{plain}/imaging/reimport", "project_without_imaging"),
        (f"/api/projects/{staged}/imaging/reimport", "project_not_approved"),
    ):
        r = await client.post(url, headers=owner.headers)
        assert r.status_code == 409, url
        assert r.json()["code"] == code
    for url, code in (
        (f"/api/projects/{plain}/imaging", "project_without_imaging"),
        (f"/api/projects/{staged}/imaging", "project_not_approved"),
    ):
        r = await client.delete(url, headers=admin.headers)
        assert r.status_code == 409, url
        assert r.json()["code"] == code
    assert await _view(client, owner.headers, staged) == {}


async def test_an_offline_trusts_status_is_only_the_last_known(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    (trust,) = await _trusts(hub, "OFF")
    project_id = await _staged_project(client, owner, trust)
    await _decide(client, admin, project_id, trust)
    await _imported(client, trust, project_id, ready=25, running=15)
    current = (await _view(client, owner.headers, project_id))["OFF"]
    assert (current["stale"], current["stale_reason"], current["trust_status"]) == (False, None, "online")

    async def heard_from(seconds_ago: float) -> None:
        async with transaction(hub.sessions) as s:
            await s.execute(
                update(Trust)
                .where(Trust.id == trust.id)
                .values(last_heartbeat=datetime.now(UTC) - timedelta(seconds=seconds_ago))
            )

    await heard_from(600)
    offline = (await _view(client, owner.headers, project_id))["OFF"]
    assert offline["trust_status"] == "offline"
    assert offline["stale"] is True
    assert offline["stale_reason"] == "trust_offline"
    assert offline["status"] == current["status"]  # still shown, as the last known
    assert offline["received_at"] == current["received_at"]

    await heard_from(0)
    await _backdate(hub, project_id, 5 * hub.settings.imaging_refresh_s + 10)
    outdated = (await _view(client, owner.headers, project_id))["OFF"]
    assert (outdated["stale"], outdated["stale_reason"]) == (True, "status_outdated")


async def test_deleting_an_imaging_project_deletes_its_images_at_approved_trusts(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    imported, freezing, declined = await _trusts(hub, "DIM", "DFR", "DDC")
    project_id = await _staged_project(client, owner, imported, freezing, declined)
    for trust in (imported, freezing):
        await _decide(client, admin, project_id, trust)
    await _decide(client, admin, project_id, declined, "DECLINED")
    await _imported(client, imported, project_id)
    (waiting_import,) = [t for t in await _imaging_tasks(db, project_id) if t.trust_id == freezing.id]

    r = await client.delete(f"/api/projects/{project_id}", headers=owner.headers)
    assert r.status_code == 204
    deletions = await _imaging_tasks(db, project_id, TaskType.DELETE_IMAGING)
    assert sorted(t.trust_id for t in deletions) == sorted([imported.id, freezing.id])
    await db.refresh(waiting_import)
    assert waiting_import.status is TaskStatus.CANCELLED  # it must not import behind the deletion
    entries = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "imaging.delete_requested"))).all()
    assert len(entries) == 2
    assert {e.details["reason"] for e in entries} == {"the project was deleted"}
    assert await lease_as(client, declined) == []

    (task,) = await lease_as(client, imported, TaskType.DELETE_IMAGING)
    assert ImagingProjectPayload.model_validate(imported.open(task)).project_id == uuid.UUID(project_id)
    gone = imaging_status(project_id, ready=None, failed=None, running=None, complete=True, deleted=True)
    assert await _answer(client, imported, task, gone) == "COMPLETED"
    row = await db.scalar(
        select(ImagingImport).where(ImagingImport.trust_id == imported.id).execution_options(populate_existing=True)
    )
    assert row is not None
    assert row.status is not None
    assert row.status["deleted"] is True
    await _backdate(hub, project_id, 3600)
    assert await _refreshes(hub) == 0  # a deleted project is not asked about
    assert (await client.get(f"/api/projects/{project_id}/imaging", headers=owner.headers)).status_code == 404
