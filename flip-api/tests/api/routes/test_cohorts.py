"""The hub's cohort flow: query versions, submission to every trust, gated results, staging, snapshots.

The trust side is played through the real machine routes with each trust's own key: lease the task,
open its payload with the trust's payload key, post a result built from the flip-core contract models.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hub_testing import (
    COHORT_SQL,
    MakeUser,
    RegisteredTrust,
    answer_cohort_queries,
    cohort_statistics,
    gated,
    lease_as,
    post_result,
    ready_cohort,
    register_test_trust,
)
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, CohortResult, CohortSnapshot, TrustTask
from flip_api.db.session import transaction
from flip_api.services.trusts import payload_keyring
from flip_api.worker import run_once
from flip_core.cohort import (
    DEFAULT_MIN_K,
    CohortErrorCode,
    CohortQueryPayload,
    CohortSnapshotInfo,
    PersistCohortPayload,
)
from flip_core.crypto import Envelope
from flip_core.tasks import TaskStatus, TaskType, payload_purpose

R = RoleName.RESEARCHER
OTHER_SQL = "SELECT person_id FROM person WHERE gender_concept_id = 8532"


async def _project(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> str:
    body: dict[str, Any] = {"name": f"Cohort {uuid.uuid4().hex[:8]}", "has_imaging": False, **fields}
    r = await client.post("/api/projects", json=body, headers=headers)
    assert r.status_code == 201, r.text
    project_id: str = r.json()["id"]
    return project_id


async def _save(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: str, sql: str = COHORT_SQL, name: str = "v"
) -> httpx.Response:
    return await client.put(f"/api/projects/{project_id}/query", json={"name": name, "sql": sql}, headers=headers)


async def _submit(client: httpx.AsyncClient, headers: dict[str, str], project_id: str) -> dict[str, Any]:
    r = await client.post(f"/api/projects/{project_id}/query/submit", headers=headers)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


async def _results(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: str, **params: Any
) -> dict[str, Any]:
    r = await client.get(f"/api/projects/{project_id}/query/results", params=params, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _by_code(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["trust_code"]: t for t in results["trusts"]}


async def _stage(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: str, *trusts: RegisteredTrust
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{project_id}/stage", json={"trust_ids": [str(t.id) for t in trusts]}, headers=headers
    )


async def _cohort_actions(db: AsyncSession, project_id: str) -> list[str]:
    rows = await db.scalars(
        select(AuditEntry.action)
        .where(AuditEntry.subject_id == project_id, AuditEntry.action.like("cohort.%"))
        .order_by(AuditEntry.seq)
    )
    return list(rows.all())


async def _trusts(hub: HubState, *codes: str) -> list[RegisteredTrust]:
    return [await register_test_trust(hub, code) for code in codes]


# --------------------------------------------------------------------------- saving versions


async def test_save_versions_noop_and_history(client: httpx.AsyncClient, make_user: MakeUser, db: AsyncSession) -> None:
    owner = await make_user(R)
    project_id = await _project(client, owner.headers)
    empty = await client.get(f"/api/projects/{project_id}/query", headers=owner.headers)
    assert empty.json() == {"latest": None, "versions": []}

    first = await _save(client, owner.headers, project_id, name="Adults")
    assert first.status_code == 200, first.text
    assert first.json()["version"] == 1
    assert first.json()["created"] is True
    assert first.json()["created_by"] == str(owner.id)
    # The same SQL again (whitespace around it aside) is the same query: nothing new is saved.
    same = await _save(client, owner.headers, project_id, sql=f"  {COHORT_SQL}\n", name="Renamed")
    assert same.json()["created"] is False
    assert same.json()["id"] == first.json()["id"]
    assert same.json()["name"] == "Adults"
    second = await _save(client, owner.headers, project_id, sql=OTHER_SQL, name="Women")
    assert second.json()["version"] == 2
    assert second.json()["created"] is True

    history = (await client.get(f"/api/projects/{project_id}/query", headers=owner.headers)).json()
    assert history["latest"]["version"] == 2
    assert history["latest"]["sql"] == OTHER_SQL
    assert [v["version"] for v in history["versions"]] == [2, 1]
    assert [v["name"] for v in history["versions"]] == ["Women", "Adults"]
    assert await _cohort_actions(db, project_id) == ["cohort.query_saved", "cohort.query_saved"]
    saved = await db.scalar(select(AuditEntry).where(AuditEntry.action == "cohort.query_saved"))
    assert saved is not None
    assert saved.details["version"] == 1
    assert saved.details["sql_length"] == len(COHORT_SQL)


async def test_invalid_query_is_refused_with_the_validators_reason(
    client: httpx.AsyncClient, make_user: MakeUser, db: AsyncSession
) -> None:
    owner = await make_user(R)
    project_id = await _project(client, owner.headers)
    for sql, rule in [
        ("DELETE FROM person", "write_statement"),
        ("SELECT person_id FROM pg_catalog.pg_authid", "schema_not_allowed"),
        ("SELECT 1; SELECT 2", "multiple_statements"),
        ("SELECT year_of_birth FROM person", "no_person_column"),
    ]:
        refused = await _save(client, owner.headers, project_id, sql=sql)
        assert refused.status_code == 422, sql
        assert refused.json()["code"] == "invalid_query", sql
        check = await client.post(
            f"/api/projects/{project_id}/query/precheck", json={"sql": sql}, headers=owner.headers
        )
        assert check.status_code == 200
        assert check.json()["valid"] is False
        assert check.json()["rule"] == rule, sql
        assert check.json()["detail"] == refused.json()["detail"]
    ok = await client.post(
        f"/api/projects/{project_id}/query/precheck", json={"sql": COHORT_SQL}, headers=owner.headers
    )
    assert ok.json() == {"valid": True, "rule": None, "detail": None}
    too_long = await _save(client, owner.headers, project_id, sql="SELECT person_id FROM person " + " " * 10_240)
    assert too_long.status_code == 422
    assert (await client.get(f"/api/projects/{project_id}/query", headers=owner.headers)).json()["latest"] is None
    assert await _cohort_actions(db, project_id) == []


async def test_only_editors_of_unstaged_projects_save_and_submit(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    owner = await make_user(R)
    member = await make_user(RoleName.VIEWER)
    stranger = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    (trust,) = await _trusts(hub, "ED1")
    project_id = await _project(client, owner.headers, member_ids=[str(member.id)])

    refused = await _save(client, member.headers, project_id)
    assert refused.status_code == 403
    assert refused.json()["code"] == "not_project_owner"
    hidden = await _save(client, stranger.headers, project_id)
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "project_not_found"
    assert (await client.get(f"/api/projects/{project_id}/query/results", headers=stranger.headers)).status_code == 404
    assert (await _save(client, admin.headers, project_id)).status_code == 200

    no_query = await _project(client, owner.headers)
    r = await client.post(f"/api/projects/{no_query}/query/submit", headers=owner.headers)
    assert r.status_code == 409
    assert r.json()["code"] == "no_cohort_query"
    r = await client.get(f"/api/projects/{no_query}/query/results", headers=owner.headers)
    assert r.status_code == 404
    assert r.json()["code"] == "cohort_query_not_found"

    await ready_cohort(client, owner.headers, project_id, trust)
    assert (await _stage(client, owner.headers, project_id, trust)).status_code == 200
    for attempt in (
        _save(client, owner.headers, project_id, sql=OTHER_SQL),
        client.post(f"/api/projects/{project_id}/query/submit", headers=admin.headers),
    ):
        r = await attempt
        assert r.status_code == 409
        assert r.json()["code"] == "project_not_editable"
    # Reading stays open to readers, including the staged trust's decision makers.
    trust_admin = await make_user(trust_admin_of=[trust])
    assert (await client.get(f"/api/projects/{project_id}/query", headers=trust_admin.headers)).status_code == 200


async def test_submit_needs_registered_trusts(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    owner = await make_user(R)
    project_id = await _project(client, owner.headers)
    await _save(client, owner.headers, project_id)
    r = await client.post(f"/api/projects/{project_id}/query/submit", headers=owner.headers)
    assert r.status_code == 409
    assert r.json()["code"] == "no_trusts_registered"


# --------------------------------------------------------------------------- submission


async def test_submit_sends_one_task_per_trust_that_only_it_can_open(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    a, b, c = await _trusts(hub, "SA", "SB", "SC")
    project_id = await _project(client, owner.headers)
    query = (await _save(client, owner.headers, project_id)).json()

    submitted = await _submit(client, owner.headers, project_id)
    assert submitted["query"]["version"] == 1
    assert submitted["is_latest"] is True
    assert [t["state"] for t in submitted["trusts"]] == ["queued"] * 3
    assert submitted["totals"]["trusts"] == 3
    assert submitted["totals"]["by_state"]["queued"] == 3
    assert submitted["totals"]["record_count"] == 0

    tasks = (await db.scalars(select(TrustTask).where(TrustTask.type == "cohort_query"))).all()
    assert sorted(t.trust_id for t in tasks) == sorted([a.id, b.id, c.id])
    for task in tasks:
        assert task.subject_type == "cohort_query"
        assert task.subject_id == query["id"]
        assert "year_of_birth" not in task.payload  # sealed at rest
    # The hub's copy of trust A's payload key opens A's payload, for this purpose only.
    a_task = next(t for t in tasks if t.trust_id == a.id)
    async with hub.sessions() as s:
        ring = await payload_keyring(s, hub.data_key, a.trust)
    opened = CohortQueryPayload.model_validate(
        ring.open_json(Envelope.model_validate_json(a_task.payload), payload_purpose(TaskType.COHORT_QUERY))
    )
    assert opened.sql == COHORT_SQL
    assert opened.query_id == uuid.UUID(query["id"])
    assert opened.project_id == uuid.UUID(project_id)
    assert opened.version == 1
    assert opened.min_k == DEFAULT_MIN_K

    (leased,) = await lease_as(client, a)
    assert CohortQueryPayload.model_validate(a.open(leased)) == opened
    with pytest.raises(Exception, match="unknown key id"):
        b.open(leased)  # another trust's keyring cannot open it
    states = {t["trust_code"]: t["state"] for t in (await _results(client, owner.headers, project_id))["trusts"]}
    assert states == {"SA": "running", "SB": "queued", "SC": "queued"}
    submitted_entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "cohort.query_submitted"))
    assert submitted_entry is not None
    assert submitted_entry.details["trusts"] == 3
    assert submitted_entry.details["min_k"] == DEFAULT_MIN_K


async def test_results_aggregate_released_suppressed_and_failed_answers(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    big, small, hidden, broken = await _trusts(hub, "BIG", "SML", "HID", "BRK")
    project_id = await _project(client, owner.headers)
    await _save(client, owner.headers, project_id)
    await _submit(client, owner.headers, project_id)
    await answer_cohort_queries(client, big, 120)
    await answer_cohort_queries(client, small, 30)
    await answer_cohort_queries(client, hidden, None)
    (task,) = await lease_as(client, broken)
    failed = await post_result(
        client, broken, task, outcome="failed", error={"code": CohortErrorCode.QUERY_TIMEOUT, "detail": "over 60 s"}
    )
    assert failed.json()["status"] == "FAILED"

    results = await _results(client, owner.headers, project_id)
    by_code = _by_code(results)
    assert by_code["BIG"]["state"] == "done"
    assert by_code["BIG"]["record_count"] == {"value": 120, "suppressed": False}
    assert by_code["BIG"]["statistics"]["record_count"] == {"value": 120, "suppressed": False}
    assert by_code["BIG"]["statistics"]["k"] == DEFAULT_MIN_K
    assert by_code["BIG"]["received_at"] is not None
    assert by_code["HID"]["state"] == "suppressed"
    assert by_code["HID"]["record_count"] == {"value": None, "suppressed": True}
    assert by_code["BRK"]["state"] == "error"
    assert by_code["BRK"]["record_count"] is None
    assert by_code["BRK"]["error_code"] == "query_timeout"
    assert by_code["BRK"]["error_detail"] == "over 60 s"
    assert results["totals"]["record_count"] == 150  # the suppressed count adds nothing
    assert results["totals"]["trusts"] == 4
    assert results["totals"]["by_state"] == {
        "queued": 0,
        "running": 0,
        "done": 2,
        "suppressed": 1,
        "error": 1,
        "cancelled": 0,
    }
    rows = (await db.scalars(select(CohortResult))).all()
    assert {r.record_count for r in rows} == {120, 30, None}
    recorded = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "cohort.result_recorded"))).all()
    assert sorted(e.details["state"] for e in recorded) == ["DONE", "DONE", "ERROR", "SUPPRESSED"]
    assert {e.actor_type for e in recorded} == {"trust"}


async def test_an_ungated_number_is_never_stored(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    trusts = await _trusts(hub, "RAW", "LOW", "ODD", "MIS", "KLO", "XTR")
    raw, low, odd, mismatched, below_hub_k, extra = trusts
    project_id = await _project(client, owner.headers)
    query_id = (await _save(client, owner.headers, project_id)).json()["id"]
    await _submit(client, owner.headers, project_id)
    secret = 7531  # an ungated count that must appear nowhere on the hub

    def answer(persons: int | None = 40, **changes: Any) -> dict[str, Any]:
        stats = cohort_statistics(uuid.UUID(query_id), persons)
        stats.update(changes)
        return stats

    bad_answers: dict[str, dict[str, Any]] = {
        "RAW": answer(record_count=secret),  # a bare number where a GatedCount belongs
        "LOW": answer(record_count={"value": 3, "suppressed": False}),  # released under k
        "ODD": answer(record_count={"value": secret, "suppressed": True}),  # suppressed, yet with a value
        "MIS": answer(query_id=str(uuid.uuid4())),  # answers another question
        "KLO": answer(k=5),  # a lower threshold than the hub asked for
        "XTR": {**answer(), f"persons_{secret}": secret},  # a field the contract does not have
    }
    for trust in (raw, low, odd, mismatched, below_hub_k, extra):
        (task,) = await lease_as(client, trust)
        r = await post_result(client, trust, task, bad_answers[trust.code])
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "FAILED", trust.code

    by_code = _by_code(await _results(client, owner.headers, project_id))
    for code, entry in by_code.items():
        assert entry["state"] == "error", code
        assert entry["error_code"] == "invalid_result", code
        assert entry["record_count"] is None
        assert entry["statistics"] is None
    assert "k=5" in by_code["KLO"]["error_detail"]
    assert "below the threshold" in by_code["LOW"]["error_detail"]
    # Nothing of a refused answer is kept: not in the task, not in the result row, not in the audit log.
    tasks = (await db.scalars(select(TrustTask).where(TrustTask.type == "cohort_query"))).all()
    assert all(t.result is None for t in tasks)
    assert all(t.error is not None and t.error["code"] == "invalid_result" for t in tasks)
    rows = (await db.scalars(select(CohortResult))).all()
    assert all(r.record_count is None and r.statistics is None for r in rows)
    stored = " ".join(
        [str(t.error) for t in tasks]
        + [f"{r.error_detail}" for r in rows]
        + [str(e.details) for e in (await db.scalars(select(AuditEntry))).all()]
    )
    assert str(secret) not in stored


async def test_many_trusts_post_results_at_once(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    trusts = await _trusts(hub, *(f"CC{i:02d}" for i in range(16)))
    project_id = await _project(client, owner.headers)
    await _save(client, owner.headers, project_id)
    await _submit(client, owner.headers, project_id)
    leased = [(trust, (await lease_as(client, trust))[0]) for trust in trusts]

    def answer(i: int, trust: RegisteredTrust, task: dict[str, Any]) -> dict[str, Any]:
        payload = CohortQueryPayload.model_validate(trust.open(task))
        return cohort_statistics(payload.query_id, None if i % 4 == 0 else 100 + i)

    bodies = [answer(i, trust, task) for i, (trust, task) in enumerate(leased)]
    # Every trust posts at once, and each posts its answer twice (an agent retrying from its outbox).
    posts = [post_result(client, trust, task, body) for (trust, task), body in zip(leased, bodies, strict=True)]
    repeats = [post_result(client, trust, task, body) for (trust, task), body in zip(leased, bodies, strict=True)]
    responses = await asyncio.gather(*posts, *repeats)
    assert [r.status_code for r in responses] == [200] * 32, [r.text for r in responses if r.status_code != 200]
    assert sum(r.json()["duplicate"] for r in responses) == 16

    results = await _results(client, owner.headers, project_id)
    released = [100 + i for i in range(16) if i % 4 != 0]
    assert results["totals"]["record_count"] == sum(released)
    assert results["totals"]["by_state"]["done"] == 12
    assert results["totals"]["by_state"]["suppressed"] == 4
    recorded = (await db.scalars(select(AuditEntry.seq).where(AuditEntry.action == "cohort.result_recorded"))).all()
    assert len(recorded) == 16  # one per trust, however many times it posted
    verify = await client.get("/api/audit/verify", headers=(await make_user(RoleName.ADMIN)).headers)
    assert verify.json()["ok"] is True


async def test_a_new_submission_supersedes_pending_work(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    running, _, answered = await _trusts(hub, "RUN", "WAI", "ANS")
    project_id = await _project(client, owner.headers)
    await _save(client, owner.headers, project_id)
    await _submit(client, owner.headers, project_id)
    await answer_cohort_queries(client, answered, 55)
    (held,) = await lease_as(client, running)

    await _save(client, owner.headers, project_id, sql=OTHER_SQL)
    second = await _submit(client, owner.headers, project_id)
    assert second["query"]["version"] == 2
    assert {t["state"] for t in second["trusts"]} == {"queued"}

    old = _by_code(await _results(client, owner.headers, project_id, version=1))
    assert old["RUN"]["state"] == "cancelled"
    assert old["RUN"]["error_code"] == "cancelled"
    assert "superseded by version 2" in old["RUN"]["error_detail"]
    assert old["WAI"]["state"] == "cancelled"
    assert old["ANS"]["state"] == "done"  # a finished answer stays on record for its version
    # The trust that was running version 1 finds its lease gone.
    late = await post_result(client, running, held, cohort_statistics(uuid.UUID(held["id"]), 60))
    assert late.status_code == 409
    assert late.json()["code"] == "stale_lease"
    # Only version 2 is left to work on.
    (fresh,) = await lease_as(client, running)
    assert CohortQueryPayload.model_validate(running.open(fresh)).version == 2
    entry = await db.scalar(
        select(AuditEntry).where(AuditEntry.action == "cohort.query_submitted").order_by(AuditEntry.seq.desc())
    )
    assert entry is not None
    assert len(entry.details["superseded_tasks"]) == 2

    # Submitting the same version again starts it afresh everywhere.
    await answer_cohort_queries(client, answered, 70)
    again = await _submit(client, owner.headers, project_id)
    assert _by_code(again)["ANS"]["state"] == "queued"
    assert _by_code(again)["ANS"]["record_count"] is None
    missing = await client.get(
        f"/api/projects/{project_id}/query/results", params={"version": 9}, headers=owner.headers
    )
    assert missing.status_code == 404
    assert missing.json()["code"] == "cohort_query_not_found"


async def test_an_expired_last_lease_is_an_error_result(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    owner = await make_user(R)
    worker_path, lease_path = await _trusts(hub, "WRK", "LSE")
    project_id = await _project(client, owner.headers)
    await _save(client, owner.headers, project_id)
    await _submit(client, owner.headers, project_id)
    for trust in (worker_path, lease_path):
        await lease_as(client, trust)
    # Both agents vanish on their last attempt.
    async with transaction(hub.sessions) as s:
        await s.execute(
            update(TrustTask)
            .where(TrustTask.type == "cohort_query")
            .values(max_attempts=1, lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await lease_as(client, lease_path) == []  # the lease path fails it on the way
    report = await run_once(hub)  # the worker fails the other (unless the in-process worker did)
    assert report is not None
    assert report.failed_leases in (0, 1)
    by_code = _by_code(await _results(client, owner.headers, project_id))
    for code in ("WRK", "LSE"):
        assert by_code[code]["state"] == "error"
        assert by_code[code]["error_code"] == "lease_expired"


# --------------------------------------------------------------------------- staging


async def test_staging_needs_a_usable_count_at_every_chosen_trust(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    good, pending, hidden, broken, left_out = await _trusts(hub, "GOO", "PEN", "HDN", "BRO", "OUT")
    project_id = await _project(client, owner.headers)

    nothing = await _stage(client, owner.headers, project_id, good)
    assert nothing.status_code == 409
    assert "no_cohort_query" in nothing.json()["detail"]
    await _save(client, owner.headers, project_id)
    unsent = await _stage(client, owner.headers, project_id, good)
    assert "cohort_not_submitted" in unsent.json()["detail"]

    await _submit(client, owner.headers, project_id)
    await answer_cohort_queries(client, good, 80)
    await answer_cohort_queries(client, hidden, None)
    (task,) = await lease_as(client, broken)
    await post_result(client, broken, task, outcome="failed", error={"code": "query_failed"})
    refused = await _stage(client, owner.headers, project_id, good, pending, hidden, broken)
    assert refused.status_code == 409
    assert refused.json()["code"] == "staging_precondition_failed"
    detail = refused.json()["detail"]
    assert f"trust {pending.id}: " in detail
    assert "(cohort_pending)" in detail
    assert f"trust {hidden.id}: " in detail
    assert "(cohort_suppressed)" in detail
    assert f"trust {broken.id}: " in detail
    assert "query_failed (cohort_error)" in detail
    assert str(good.id) not in detail

    # A newer, unsubmitted version is what counts: the old answers no longer qualify.
    await _save(client, owner.headers, project_id, sql=OTHER_SQL)
    stale = await _stage(client, owner.headers, project_id, good)
    assert "cohort_not_submitted" in stale.json()["detail"]
    await _submit(client, owner.headers, project_id)
    await answer_cohort_queries(client, good, 90)
    await answer_cohort_queries(client, pending, 45)

    staged = await _stage(client, owner.headers, project_id, good, pending)
    assert staged.status_code == 200, staged.text
    # The trusts left out have nothing more to answer.
    by_code = _by_code(await _results(client, owner.headers, project_id))
    assert by_code["GOO"]["state"] == "done"
    assert by_code["PEN"]["state"] == "done"
    for code in ("HDN", "BRO", "OUT"):
        assert by_code[code]["state"] == "cancelled"
        assert "staged at other trusts" in by_code[code]["error_detail"]
    assert await lease_as(client, left_out) == []
    statuses = (await db.scalars(select(TrustTask.status).where(TrustTask.trust_id == left_out.id))).all()
    assert set(statuses) == {TaskStatus.CANCELLED}


async def test_deleting_a_project_cancels_its_pending_cohort_work(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    owner = await make_user(R)
    (trust,) = await _trusts(hub, "DEL")
    project_id = await _project(client, owner.headers)
    await _save(client, owner.headers, project_id)
    await _submit(client, owner.headers, project_id)
    assert (await client.delete(f"/api/projects/{project_id}", headers=owner.headers)).status_code == 204
    assert await lease_as(client, trust) == []


# --------------------------------------------------------------------------- approval and snapshots


def _snapshot(payload: PersistCohortPayload, persons: int | None, rows: int | None = 300) -> dict[str, Any]:
    info = CohortSnapshotInfo(
        project_id=payload.project_id,
        query_id=payload.query_id,
        persons=gated(persons),
        rows=gated(rows),
        k=10,
        columns=["person_id", "year_of_birth"],
        sha256="ab" * 32,
        created_at=datetime.now(UTC),
    )
    return info.model_dump(mode="json")


async def test_approval_freezes_the_cohort_and_records_the_snapshot(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    first, second, never = await _trusts(hub, "FR1", "FR2", "FR3")
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, first, second, never)
    await _save(client, owner.headers, project_id, sql=OTHER_SQL)
    await _submit(client, owner.headers, project_id)
    for trust in (first, second, never):
        await answer_cohort_queries(client, trust, 64)
    assert (await _stage(client, owner.headers, project_id, first, second, never)).status_code == 200
    url = f"/api/projects/{project_id}/snapshots"
    assert (await client.get(url, headers=owner.headers)).json() == []

    r = await client.post(
        f"/api/projects/{project_id}/trusts/{first.id}/decision", json={"decision": "APPROVED"}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    (task,) = await lease_as(client, first, TaskType.PERSIST_COHORT)
    payload = PersistCohortPayload.model_validate(first.open(task))
    assert payload.version == 2  # the query of record
    assert payload.sql == OTHER_SQL
    assert payload.project_id == uuid.UUID(project_id)
    assert payload.min_k == DEFAULT_MIN_K
    (pending,) = (await client.get(url, headers=owner.headers)).json()
    assert pending["trust_code"] == "FR1"
    assert pending["state"] == "running"
    assert pending["persons"] is None

    done = await post_result(client, first, task, _snapshot(payload, 64))
    assert done.json()["status"] == "COMPLETED"
    (frozen,) = (await client.get(url, headers=owner.headers)).json()
    assert frozen["state"] == "done"
    assert frozen["persons"] == {"value": 64, "suppressed": False}
    assert frozen["rows"] == {"value": 300, "suppressed": False}
    assert frozen["sha256"] == "ab" * 32
    assert frozen["version"] == 2
    assert frozen["created_at"] is not None

    # A later joiner freezes too; its trust refuses (too small now), and that is shown, not hidden.
    await client.post(
        f"/api/projects/{project_id}/trusts/{second.id}/decision", json={"decision": "APPROVED"}, headers=admin.headers
    )
    (task2,) = await lease_as(client, second, TaskType.PERSIST_COHORT)
    error = {"code": CohortErrorCode.BELOW_THRESHOLD, "detail": "fewer than k persons"}
    await post_result(client, second, task2, outcome="failed", error=error)
    # A snapshot of another project is refused outright.
    await client.post(
        f"/api/projects/{project_id}/trusts/{never.id}/decision", json={"decision": "APPROVED"}, headers=admin.headers
    )
    (task3,) = await lease_as(client, never, TaskType.PERSIST_COHORT)
    wrong = PersistCohortPayload.model_validate({**never.open(task3), "project_id": str(uuid.uuid4())})
    assert (await post_result(client, never, task3, _snapshot(wrong, 70))).json()["status"] == "FAILED"

    views = {s["trust_code"]: s for s in (await client.get(url, headers=owner.headers)).json()}
    assert views["FR2"]["state"] == "error"
    assert views["FR2"]["error_code"] == "below_threshold"
    assert views["FR2"]["persons"] is None
    assert views["FR3"]["error_code"] == "invalid_result"
    snapshots = (await db.scalars(select(CohortSnapshot))).all()
    assert [(s.trust_id, s.persons) for s in snapshots] == [(first.id, 64)]
    assert await _cohort_actions(db, project_id) == [
        *["cohort.query_saved", "cohort.query_submitted"],
        *["cohort.result_recorded"] * 3,
        *["cohort.query_saved", "cohort.query_submitted"],
        *["cohort.result_recorded"] * 3,
        *["cohort.snapshot_requested", "cohort.snapshot_recorded"],
        *["cohort.snapshot_requested", "cohort.snapshot_failed"],
        *["cohort.snapshot_requested", "cohort.snapshot_failed"],
    ]


async def test_a_suppressed_snapshot_count_is_stored_as_no_number(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, db: AsyncSession
) -> None:
    owner = await make_user(R)
    admin = await make_user(RoleName.ADMIN)
    (trust,) = await _trusts(hub, "SUP")
    project_id = await _project(client, owner.headers)
    await ready_cohort(client, owner.headers, project_id, trust)
    await _stage(client, owner.headers, project_id, trust)
    await client.post(
        f"/api/projects/{project_id}/trusts/{trust.id}/decision", json={"decision": "APPROVED"}, headers=admin.headers
    )
    (task,) = await lease_as(client, trust, TaskType.PERSIST_COHORT)
    payload = PersistCohortPayload.model_validate(trust.open(task))
    await post_result(client, trust, task, _snapshot(payload, 50, rows=None))
    (view,) = (await client.get(f"/api/projects/{project_id}/snapshots", headers=owner.headers)).json()
    assert view["rows"] == {"value": None, "suppressed": True}
    snapshot = await db.scalar(select(CohortSnapshot))
    assert snapshot is not None
    assert snapshot.rows is None


async def test_the_hubs_threshold_travels_with_the_question(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.settings, "cohort_min_k", 25)
    owner = await make_user(R)
    strict, lax = await _trusts(hub, "STR", "LAX")
    project_id = await _project(client, owner.headers)
    await _save(client, owner.headers, project_id)
    await _submit(client, owner.headers, project_id)
    for trust, k in ((strict, 25), (lax, DEFAULT_MIN_K)):
        (task,) = await lease_as(client, trust)
        payload = CohortQueryPayload.model_validate(trust.open(task))
        assert payload.min_k == 25
        await post_result(client, trust, task, cohort_statistics(payload.query_id, 40, k=k))
    by_code = _by_code(await _results(client, owner.headers, project_id))
    assert by_code["STR"]["state"] == "done"
    assert by_code["LAX"]["state"] == "error"
    assert by_code["LAX"]["error_code"] == "invalid_result"
