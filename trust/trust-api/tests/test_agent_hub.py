"""The agent against the real hub: round trips, identity checks, outages, restarts, stale leases, limits."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update
from trust_testing import Gate, RunningHub, agent_settings, current, eventually, ping_payload, start_agent, write_kit

from flip_api.db.models import TrustTask
from flip_api.db.session import transaction
from flip_api.services.tasks import lease_tasks
from flip_api.services.trusts import payload_keyring
from flip_core.tasks import PingResult, TaskStatus, TaskType, payload_purpose
from flip_trust_api.agent import Agent
from flip_trust_api.errors import FatalHubError, IdentityMismatch
from flip_trust_api.outbox import OUTBOX_FILE, Outbox


async def test_ping_round_trip_with_heartbeat_and_health(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("RT1")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("are you there?"))
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent")
    run = await start_agent(settings, kit)
    try:
        done = await hub.wait_for_task(task_id)
        result = PingResult.model_validate(done.result)
        assert result.echo == "are you there?"
        assert done.attempt == 1
        row = await eventually(lambda: hub.trust(trust.id), lambda t: t.last_heartbeat is not None)
        beat = row.services_health or {}
        assert set(beat["services"]) == {"data-access-api", "imaging-api", "pacs", "omop-db"}
        assert {s["state"] for s in beat["services"].values()} == {"unknown"}
        async with httpx.AsyncClient() as http:
            health = (await http.get(run.agent.health_url)).json()
        assert health["status"] == "running"
        assert health["trust"]["code"] == "RT1"
        assert health["tasks"]["completed"] == 1
        assert health["tasks"]["limits"] == {
            "ping": 8,
            "cohort_query": 2,
            "persist_cohort": 1,
            "create_imaging": 2,
            "get_imaging_status": 4,
            "reimport_studies": 2,
            "delete_imaging": 1,
        }
        await eventually(lambda: _outbox_size(run.agent), lambda n: n == 0)
    finally:
        await run.stop()
    assert await hub.audit_actions(task_id) == ["task.enqueued", "task.completed"]


async def test_a_kit_for_another_trust_stops_the_agent_before_any_work(hub: RunningHub, tmp_path: Path) -> None:
    trust_a, kit_a = await hub.register_trust("IDA")
    trust_b, _ = await hub.register_trust("IDB")
    task_id = await hub.enqueue(trust_a, TaskType.PING, ping_payload())
    # A's key, but the kit claims to be B: the hub resolves the key to A.
    wrong = kit_a.model_copy(update={"trust_id": trust_b.id})
    settings = agent_settings(write_kit(tmp_path / "kit.env", wrong), tmp_path / "agent")
    run = await start_agent(settings, wrong, ready=False)
    with pytest.raises(IdentityMismatch, match=str(trust_a.id)):
        await asyncio.wait_for(run.task, timeout=30)
    assert not run.agent.ready.is_set()
    assert (await hub.task(task_id)).status is TaskStatus.PENDING


async def test_a_revoked_key_is_fatal(hub: RunningHub, tmp_path: Path) -> None:
    _, kit = await hub.register_trust("REV")
    revoked = kit.model_copy(update={"api_key": "flip_tk_" + "x" * 43})
    settings = agent_settings(write_kit(tmp_path / "kit.env", revoked), tmp_path / "agent")
    run = await start_agent(settings, revoked, ready=False)
    with pytest.raises(FatalHubError, match="invalid_trust_key"):
        await asyncio.wait_for(run.task, timeout=30)


async def test_a_result_stored_during_an_outage_is_delivered_once_after_a_restart(
    hub: RunningHub, tmp_path: Path
) -> None:
    trust, kit = await hub.register_trust("OUT")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("survive me"))
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent")
    gate = Gate()
    first = await start_agent(settings, kit, registry=gate.registry())
    try:
        await eventually(lambda: current(gate.started), lambda n: n == 1)
        await hub.stop()  # the hub goes away while the task runs
        gate.release.set()
        await eventually(lambda: current(first.agent.counts["completed"]), lambda n: n == 1)
        await eventually(lambda: current(first.agent.limits.in_use()), lambda used: not used)
    finally:
        await first.stop()  # its last delivery attempt fails too: the hub is still down

    box = await Outbox.open(tmp_path / "agent" / OUTBOX_FILE)
    try:
        (entry,) = await box.pending()
        assert entry.task_id == task_id
        assert entry.result.result == {"echo": "survive me", "attempt": 1}
    finally:
        await box.close()

    await hub.start()
    assert (await hub.task(task_id)).status is TaskStatus.LEASED
    second = await start_agent(settings, kit, registry=gate.registry())
    try:
        done = await hub.wait_for_task(task_id)
        assert done.result == {"echo": "survive me", "attempt": 1}
        await eventually(lambda: _outbox_size(second.agent), lambda n: n == 0)
    finally:
        await second.stop()
    assert gate.started == 1  # executed once, across both runs
    assert await hub.audit_actions(task_id) == ["task.enqueued", "task.completed"]


async def test_a_result_for_a_lease_taken_over_elsewhere_is_dropped(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("STL")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload())
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent")
    gate = Gate()
    run = await start_agent(settings, kit, registry=gate.registry())
    try:
        await eventually(lambda: current(gate.started), lambda n: n == 1)
        # Another agent replica takes the task over after the lease "ran out" (one transaction, so this
        # agent's own lease poll skips the locked row).
        async with transaction(hub.state.sessions) as s:
            await hub.expire_lease(s, task_id)
            (taken,) = await lease_tasks(s, trust.id, max_tasks=1, lease_s=600)
        assert taken.attempt == 2
        gate.release.set()
        outbox = run.agent.outbox
        assert outbox is not None
        await eventually(lambda: outbox.settled_status(task_id), lambda s: s == "dropped:stale_lease")
        # Kept, in case the task comes back here; the other replica holds it now, so it does not.
        assert await outbox.size() == 0
    finally:
        await run.stop()
    row = await hub.task(task_id)
    assert (row.status, row.attempt, row.lease_token) == (TaskStatus.LEASED, 2, taken.lease_token)


async def test_a_task_redelivered_while_it_runs_is_answered_by_the_running_job(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("RDL")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("once"))
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent")
    gate = Gate()
    run = await start_agent(settings, kit, registry=gate.registry())
    try:
        await eventually(lambda: current(gate.started), lambda n: n == 1)
        # The lease runs out while the job is still working (as after a long hub outage) ...
        async with transaction(hub.state.sessions) as s:
            await hub.expire_lease(s, task_id)
        # ... and the hub hands the task out again, to this same agent.
        await eventually(lambda: hub.task(task_id), lambda t: t.attempt == 2)
        gate.release.set()
        done = await hub.wait_for_task(task_id)
    finally:
        await run.stop()
    assert gate.started == 1  # not executed a second time
    assert done.result == {"echo": "once", "attempt": 1}
    assert await hub.audit_actions(task_id) == ["task.enqueued", "task.completed"]


async def test_the_agent_never_leases_more_than_its_concurrency_limit(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("LIM")
    ids = [await hub.enqueue(trust, TaskType.PING, ping_payload(f"m{i}")) for i in range(6)]
    settings = agent_settings(
        write_kit(tmp_path / "kit.env", kit), tmp_path / "agent", FLIP_AGENT_CONCURRENCY={"ping": 2}
    )
    gate = Gate()
    run = await start_agent(settings, kit, registry=gate.registry(concurrency=8))
    try:
        await eventually(lambda: current(gate.running), lambda n: n == 2)
        await asyncio.sleep(1.5)  # more than one lease poll: nothing more may be taken
        assert gate.started == 2
        assert await _count(hub, trust.id, TaskStatus.LEASED) == 2
        assert await _count(hub, trust.id, TaskStatus.PENDING) == 4
        gate.release.set()
        for task_id in ids:
            await hub.wait_for_task(task_id)
    finally:
        await run.stop()
    assert gate.max_running == 2


async def test_a_payload_sealed_for_another_purpose_fails_closed(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("PUR")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload())
    async with transaction(hub.state.sessions) as s:
        ring = await payload_keyring(s, hub.state.data_key, trust)
        wrong = ring.seal_json(payload_purpose(TaskType.COHORT_QUERY), ping_payload())
        await s.execute(update(TrustTask).where(TrustTask.id == task_id).values(payload=wrong.model_dump_json()))
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent")
    run = await start_agent(settings, kit)
    try:
        failed = await hub.wait_for_task(task_id, TaskStatus.FAILED)
    finally:
        await run.stop()
    assert failed.error is not None
    assert failed.error["code"] == "payload_rejected"
    assert "task:ping" in failed.error["detail"]


async def test_stopping_lets_a_running_task_finish_within_the_grace_period(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("GRC")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("finish me"))
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent")
    gate = Gate()
    run = await start_agent(settings, kit, registry=gate.registry())
    try:
        await eventually(lambda: current(gate.started), lambda n: n == 1)
        run.agent.request_stop()
        await asyncio.sleep(0.3)
        assert not run.task.done()  # waiting for the running task
        async with httpx.AsyncClient() as http:
            assert (await http.get(run.agent.health_url)).status_code == 503  # stopping
        gate.release.set()
        await asyncio.wait_for(run.task, timeout=30)
    finally:
        gate.release.set()
        await run.stop()
    assert (await hub.task(task_id)).status is TaskStatus.COMPLETED


async def test_a_task_still_running_after_the_grace_period_is_abandoned(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("ABN")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload())
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent", FLIP_AGENT_SHUTDOWN_GRACE_S=0.2)
    gate = Gate()
    run = await start_agent(settings, kit, registry=gate.registry())
    try:
        await eventually(lambda: current(gate.started), lambda n: n == 1)
    finally:
        await run.stop()
    assert gate.cancelled == 1
    row = await hub.task(task_id)
    assert row.status is TaskStatus.LEASED  # its lease runs out and the hub hands it out again


async def test_a_long_task_keeps_its_lease(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("EXT")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload())
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent", FLIP_AGENT_LEASE_S=10)
    gate = Gate()
    run = await start_agent(settings, kit, registry=gate.registry())
    try:
        leased = await hub.wait_for_task(task_id, TaskStatus.LEASED)
        first_expiry = leased.lease_expires_at
        assert first_expiry is not None
        # At half-life (about 5 s) the agent extends the lease by another 10 s.
        extended = await eventually(
            lambda: hub.task(task_id),
            lambda t: t.lease_expires_at is not None and t.lease_expires_at > first_expiry + timedelta(seconds=2),
            timeout_s=15,
            every_s=0.25,
        )
        assert extended.attempt == 1
        gate.release.set()
        await hub.wait_for_task(task_id)
    finally:
        await run.stop()


async def _count(hub: RunningHub, trust_id: uuid.UUID, status: TaskStatus) -> int:
    async with hub.state.sessions() as s:
        query = select(func.count()).select_from(TrustTask)
        n = await s.scalar(query.where(TrustTask.trust_id == trust_id, TrustTask.status == status))
        return int(n or 0)


async def _outbox_size(agent: Agent) -> int:
    assert agent.outbox is not None
    return await agent.outbox.size()
