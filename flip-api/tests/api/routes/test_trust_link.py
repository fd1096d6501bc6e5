"""The hub side of the trust link: leasing with long-poll, results, expiry, dependencies, heartbeats."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hub_testing import MakeUser
from sqlalchemy import select, update

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, Trust, TrustTask
from flip_api.db.session import transaction
from flip_api.services.audit import Actor
from flip_api.services.tasks import enqueue_task
from flip_api.services.trusts import register_trust
from flip_api.worker import run_once
from flip_core.contract import PROTOCOL_VERSION, TrustKit
from flip_core.crypto import Envelope, Keyring, decode_key
from flip_core.tasks import TaskType, payload_purpose


async def _trust(hub: HubState, code: str = "LNK") -> tuple[Trust, TrustKit]:
    async with transaction(hub.sessions) as s:
        issued = await register_trust(
            s, Actor.system("test"), data_key=hub.data_key, hub_url="http://hub.test", name=f"Trust {code}", code=code
        )
    return issued.trust, issued.kit


def _headers(kit: TrustKit) -> dict[str, str]:
    return {"X-Trust-Key": kit.api_key, "X-Flip-Protocol": PROTOCOL_VERSION}


async def _enqueue(hub: HubState, trust: Trust, payload: dict[str, Any] | None = None, **kw: Any) -> uuid.UUID:
    async with transaction(hub.sessions) as s:
        task = await enqueue_task(s, hub, trust, kw.pop("task_type", TaskType.PING), payload or {"n": 1}, **kw)
    return task.id


async def _lease(client: httpx.AsyncClient, kit: TrustKit, wait: float = 0, **body: Any) -> dict[str, Any]:
    r = await client.post("/api/trust/tasks/lease", params={"wait": wait}, headers=_headers(kit), json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _open(kit: TrustKit, task: dict[str, Any]) -> Any:
    ring = Keyring({kit.payload_key_id: decode_key(kit.payload_key)}, current=kit.payload_key_id)
    return ring.open_json(Envelope.model_validate(task["payload"]), payload_purpose(TaskType(task["type"])))


async def test_enqueue_lease_decrypt_and_complete(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    task_id = await _enqueue(hub, trust, {"message": "secret cohort sql"})
    async with hub.sessions() as s:
        row = await s.get(TrustTask, task_id)
        assert row is not None
        assert "secret cohort sql" not in row.payload  # encrypted at rest
    leased = await _lease(client, kit)
    assert leased["trust_id"] == str(trust.id)
    (task,) = leased["tasks"]
    assert task["attempt"] == 1
    assert _open(kit, task) == {"message": "secret cohort sql"}
    # Nothing else to lease: the task is held.
    assert (await _lease(client, kit))["tasks"] == []
    body = {"lease_token": task["lease_token"], "outcome": "completed", "result": {"echo": "ok"}}
    r = await client.post(f"/api/trust/tasks/{task_id}/result", headers=_headers(kit), json=body)
    assert r.status_code == 200
    assert r.json() == {"task_id": str(task_id), "status": "COMPLETED", "duplicate": False}
    again = await client.post(f"/api/trust/tasks/{task_id}/result", headers=_headers(kit), json=body)
    assert again.json()["duplicate"] is True
    assert again.json()["status"] == "COMPLETED"
    async with hub.sessions() as s:
        actions = (await s.scalars(select(AuditEntry.action).where(AuditEntry.subject_id == str(task_id)))).all()
    assert actions == ["task.enqueued", "task.completed"]


async def test_payload_sealed_for_another_purpose_does_not_open(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    await _enqueue(hub, trust, {"sql": "SELECT 1"}, task_type=TaskType.COHORT_QUERY)
    (task,) = (await _lease(client, kit))["tasks"]
    ring = Keyring({kit.payload_key_id: decode_key(kit.payload_key)}, current=kit.payload_key_id)
    with pytest.raises(Exception, match="authentication"):
        ring.open(Envelope.model_validate(task["payload"]), payload_purpose(TaskType.PERSIST_COHORT))


async def test_long_poll_wakes_on_enqueue(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    await asyncio.wait_for(hub.notifier.listening.wait(), 5)
    started = time.monotonic()
    poll = asyncio.create_task(_lease(client, kit, wait=10))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await _enqueue(hub, trust)
    leased = await asyncio.wait_for(poll, 5)
    elapsed = time.monotonic() - started
    assert len(leased["tasks"]) == 1
    assert elapsed < 2, f"long-poll took {elapsed:.2f} s to wake"


async def test_long_poll_times_out_empty_and_ignores_other_trusts(client: httpx.AsyncClient, hub: HubState) -> None:
    _, kit = await _trust(hub, "AAA")
    other, _ = await _trust(hub, "BBB")
    await asyncio.wait_for(hub.notifier.listening.wait(), 5)
    poll = asyncio.create_task(_lease(client, kit, wait=1))
    await asyncio.sleep(0.2)
    await _enqueue(hub, other)
    started = time.monotonic()
    assert (await poll)["tasks"] == []
    assert time.monotonic() - started > 0.5


async def test_concurrent_leases_never_share_a_task(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    for i in range(20):
        await _enqueue(hub, trust, {"i": i})
    results = await asyncio.gather(*(_lease(client, kit, max_tasks=3) for _ in range(10)))
    ids = [t["id"] for r in results for t in r["tasks"]]
    assert len(ids) == 20
    assert len(set(ids)) == 20


async def test_stale_tokens_expiry_redelivery_and_final_failure(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    task_id = await _enqueue(hub, trust, max_attempts=2)
    first = (await _lease(client, kit))["tasks"][0]
    # The agent dies: its lease runs out, and the task is handed out again as attempt 2.
    await _expire(hub, task_id)
    second = (await _lease(client, kit))["tasks"][0]
    assert second["id"] == str(task_id)
    assert second["attempt"] == 2
    late = {"lease_token": first["lease_token"], "outcome": "completed", "result": {}}
    r = await client.post(f"/api/trust/tasks/{task_id}/result", headers=_headers(kit), json=late)
    assert r.status_code == 409
    assert r.json()["code"] == "stale_lease"
    r = await client.post(
        f"/api/trust/tasks/{task_id}/extend", headers=_headers(kit), json={"lease_token": first["lease_token"]}
    )
    assert r.status_code == 409
    # The second holder vanishes too: attempts are exhausted and the worker fails it visibly.
    await _expire(hub, task_id)
    report = await run_once(hub)
    assert report is not None
    assert report.failed_leases == 1
    async with hub.sessions() as s:
        row = await s.get(TrustTask, task_id)
        assert row is not None
        assert row.status.value == "FAILED"
        assert row.error == {"code": "lease_expired", "detail": "no result after 2 attempts"}
    assert (await _lease(client, kit))["tasks"] == []


async def _expire(hub: HubState, task_id: uuid.UUID) -> None:
    async with transaction(hub.sessions) as s:
        await s.execute(
            update(TrustTask)
            .where(TrustTask.id == task_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


async def test_extend_keeps_the_lease(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    task_id = await _enqueue(hub, trust)
    task = (await _lease(client, kit, lease_s=10))["tasks"][0]
    r = await client.post(
        f"/api/trust/tasks/{task_id}/extend",
        headers=_headers(kit),
        json={"lease_token": task["lease_token"], "extend_s": 600},
    )
    assert r.status_code == 200
    assert datetime.fromisoformat(r.json()["lease_expires_at"]) > datetime.now(UTC) + timedelta(seconds=500)


async def test_dependencies_order_work_and_cancel_on_failure(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    # The parent is a ping: its result needs no contract model (cohort results are tested in test_cohorts).
    parent = await _enqueue(hub, trust, task_type=TaskType.PING)
    imaging = await _enqueue(hub, trust, task_type=TaskType.CREATE_IMAGING, depends_on=parent)
    leased = (await _lease(client, kit, max_tasks=10))["tasks"]
    assert [t["id"] for t in leased] == [str(parent)]
    done = {"lease_token": leased[0]["lease_token"], "outcome": "completed", "result": {"rows": 12}}
    await client.post(f"/api/trust/tasks/{parent}/result", headers=_headers(kit), json=done)
    assert [t["id"] for t in (await _lease(client, kit))["tasks"]] == [str(imaging)]

    parent2 = await _enqueue(hub, trust, task_type=TaskType.PING)
    imaging2 = await _enqueue(hub, trust, task_type=TaskType.CREATE_IMAGING, depends_on=parent2)
    t = (await _lease(client, kit))["tasks"][0]
    failed = {"lease_token": t["lease_token"], "outcome": "failed", "error": {"code": "query_failed"}}
    await client.post(f"/api/trust/tasks/{parent2}/result", headers=_headers(kit), json=failed)
    async with hub.sessions() as s:
        child = await s.get(TrustTask, imaging2)
        assert child is not None
        assert child.status.value == "CANCELLED"
        assert child.error is not None
        assert child.error["code"] == "dependency_failed"


async def test_retryable_failure_returns_to_queue(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub)
    task_id = await _enqueue(hub, trust)
    t = (await _lease(client, kit))["tasks"][0]
    body = {"lease_token": t["lease_token"], "outcome": "failed", "error": {"code": "pacs_down", "retryable": True}}
    r = await client.post(f"/api/trust/tasks/{task_id}/result", headers=_headers(kit), json=body)
    assert r.json()["status"] == "PENDING"
    again = (await _lease(client, kit))["tasks"][0]
    assert again["attempt"] == 2


async def test_results_are_scoped_to_the_trust_and_validated(client: httpx.AsyncClient, hub: HubState) -> None:
    trust, kit = await _trust(hub, "ONE")
    _, other_kit = await _trust(hub, "TWO")
    task_id = await _enqueue(hub, trust)
    t = (await _lease(client, kit))["tasks"][0]
    body = {"lease_token": t["lease_token"], "outcome": "completed", "result": {}}
    r = await client.post(f"/api/trust/tasks/{task_id}/result", headers=_headers(other_kit), json=body)
    assert r.status_code == 404
    assert r.json()["code"] == "task_not_found"
    r = await client.post(
        f"/api/trust/tasks/{task_id}/result", headers=_headers(kit), json={**body, "outcome": "maybe"}
    )
    assert r.status_code == 422
    r = await client.post("/api/trust/tasks/lease", params={"wait": 60}, headers=_headers(kit), json={})
    assert r.status_code == 422


async def test_heartbeat_sets_status_and_health(client: httpx.AsyncClient, hub: HubState, make_user: MakeUser) -> None:
    trust, kit = await _trust(hub)
    viewer = await make_user(RoleName.VIEWER)
    now = datetime.now(UTC).isoformat()
    beat = {
        "agent_version": "0.1.0",
        "started_at": now,
        "services": {"omop-db": {"state": "healthy", "latency_ms": 3.2, "checked_at": now}},
        "outbox_pending": 0,
    }
    r = await client.post("/api/trust/heartbeat", headers=_headers(kit), json=beat)
    assert r.status_code == 200
    assert r.json()["trust_id"] == str(trust.id)
    got = (await client.get(f"/api/trusts/{trust.id}", headers=viewer.headers)).json()
    assert got["status"] == "online"
    assert got["services_health"]["services"]["omop-db"]["latency_ms"] == 3.2
    beat["services"]["pacs"] = {"state": "down", "checked_at": now, "detail": "connection refused"}  # type: ignore[index]
    await client.post("/api/trust/heartbeat", headers=_headers(kit), json=beat)
    assert (await client.get(f"/api/trusts/{trust.id}", headers=viewer.headers)).json()["status"] == "degraded"
    r = await client.post("/api/trust/heartbeat", headers=_headers(kit), json={**beat, "agent_version": 5})
    assert r.status_code == 422


async def test_admin_ping_and_task_views(client: httpx.AsyncClient, hub: HubState, make_user: MakeUser) -> None:
    trust, kit = await _trust(hub)
    admin = await make_user(RoleName.ADMIN)
    viewer = await make_user(RoleName.VIEWER)
    r = await client.post(f"/api/trusts/{trust.id}/ping", headers=admin.headers, json={"message": "hello"})
    assert r.status_code == 202
    task_id = r.json()["id"]
    t = (await _lease(client, kit))["tasks"][0]
    assert _open(kit, t)["message"] == "hello"
    body = {"lease_token": t["lease_token"], "outcome": "completed", "result": {"echo": "hello"}}
    await client.post(f"/api/trust/tasks/{task_id}/result", headers=_headers(kit), json=body)
    listing = (await client.get(f"/api/trusts/{trust.id}/tasks", headers=viewer.headers)).json()
    assert listing["total"] == 1
    assert listing["items"][0]["status"] == "COMPLETED"
    assert "result" not in listing["items"][0]
    assert "payload" not in listing["items"][0]
    detail = await client.get(f"/api/trusts/{trust.id}/tasks/{task_id}", headers=admin.headers)
    assert detail.json()["result"] == {"echo": "hello"}
    assert (await client.get(f"/api/trusts/{trust.id}/tasks/{task_id}", headers=viewer.headers)).status_code == 403
