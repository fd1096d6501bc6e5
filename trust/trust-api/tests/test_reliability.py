"""The link survives what production does to it: agents killed mid-task, replicas racing for the same
trust's work, and the hub's database going away and coming back.

Agents here are real processes (``effect_agent.py``, the agent with a ``ping`` handler that records on
disk what it started and what it applied) or, where the test must reach inside, real agents in the test's
event loop.  The hub is the real application on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from trust_testing import (
    Gate,
    RunningHub,
    agent_settings,
    current,
    eventually,
    fast_hub_settings,
    free_port,
    ping_payload,
    start_agent,
    write_kit,
)

from flip_api.db.session import ensure_database, libpq_conninfo, run_migrations
from flip_core.contract import PROTOCOL_HEADER, PROTOCOL_VERSION, TRUST_KEY_HEADER
from flip_core.embedded_pg import EmbeddedPostgres, throwaway_server
from flip_core.tasks import TaskStatus, TaskType
from flip_trust_api.serve import HEALTH_ANNOUNCEMENT

pytestmark = pytest.mark.slow

EFFECT_AGENT = Path(__file__).resolve().parent / "effect_agent.py"
LEASE_S = 10  # the shortest lease an agent may ask for


class EffectAgent:
    """``effect_agent.py`` as a child process; its effects file says what it started and applied."""

    def __init__(self, proc: asyncio.subprocess.Process, effects: Path) -> None:
        self.proc = proc
        self.effects = effects

    @classmethod
    async def start(cls, tmp: Path, name: str, kit_file: Path, state_dir: Path, *, hold_s: float) -> EffectAgent:
        effects = tmp / f"{name}.effects"
        env = {
            **os.environ,
            "FLIP_AGENT_KIT_FILE": str(kit_file),
            "FLIP_AGENT_STATE_DIR": str(state_dir),
            "FLIP_AGENT_LEASE_S": str(LEASE_S),
            "FLIP_AGENT_LEASE_WAIT_S": "5",
            "FLIP_AGENT_HEARTBEAT_INTERVAL_S": "1",
            "FLIP_AGENT_OUTBOX_RETRY_S": "0.2",
            "FLIP_AGENT_SHUTDOWN_GRACE_S": "5",
            "FLIP_LOG_JSON": "true",
        }
        with (tmp / f"{name}.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(EFFECT_AGENT), str(effects), str(hold_s), stdout=asyncio.subprocess.PIPE,
                stderr=log, env=env,
            )  # fmt: skip
        agent = cls(proc, effects)
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
            assert line.startswith(HEALTH_ANNOUNCEMENT), f"{name} did not start: {(tmp / f'{name}.log').read_text()}"
        except BaseException:
            await agent.kill()
            raise
        return agent

    def lines(self) -> list[tuple[str, uuid.UUID, int]]:
        if not self.effects.exists():
            return []
        out = []
        for raw in self.effects.read_text(encoding="utf-8").splitlines():
            what, task_id, attempt = raw.split()
            out.append((what, uuid.UUID(task_id), int(attempt)))
        return out

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout=30)
        finally:
            await self.kill()


async def _lines(agent: EffectAgent) -> list[tuple[str, uuid.UUID, int]]:
    return agent.lines()


async def test_an_agent_killed_mid_task_gets_it_back_after_the_lease_and_applies_it_once(
    hub: RunningHub, tmp_path: Path
) -> None:
    trust, kit = await hub.register_trust("KIL")
    kit_file = write_kit(tmp_path / "kit.env", kit)
    state = tmp_path / "agent-state"
    first = await EffectAgent.start(tmp_path, "first", kit_file, state, hold_s=600)
    try:
        task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("kill me"))
        await eventually(lambda: _lines(first), lambda lines: ("start", task_id, 1) in lines)
        await asyncio.sleep(LEASE_S / 2 + 1)  # long enough that the agent has extended its lease once
    finally:
        await first.kill()  # SIGKILL: no grace, no result, no goodbye
    orphaned = await hub.task(task_id)
    assert orphaned.status is TaskStatus.LEASED
    assert orphaned.attempt == 1
    assert orphaned.lease_expires_at is not None
    assert orphaned.lease_expires_at > orphaned.leased_at  # extended while it ran

    # The agent comes back (same state folder, as a restarted service would) and gets the task again,
    # but only once the dead lease has run out: nobody else may take work that might still be running.
    second = await EffectAgent.start(tmp_path, "second", kit_file, state, hold_s=0)
    try:
        done = await hub.wait_for_task(task_id, TaskStatus.COMPLETED, TaskStatus.FAILED, timeout_s=LEASE_S + 30)
    finally:
        assert await second.stop() == 0
    assert done.status is TaskStatus.COMPLETED
    assert done.attempt == 2
    assert done.leased_at is not None
    assert done.leased_at >= orphaned.lease_expires_at
    assert done.result is not None
    assert done.result["attempt"] == 2
    effects = first.lines() + second.lines()
    assert effects == [("start", task_id, 1), ("start", task_id, 2), ("applied", task_id, 2)]
    assert await hub.audit_actions(task_id) == ["task.enqueued", "task.completed"]


async def test_two_replicas_of_one_trust_never_handle_the_same_task(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("REP")
    kit_file = write_kit(tmp_path / "kit.env", kit)
    replicas = [
        await EffectAgent.start(tmp_path, f"replica-{n}", kit_file, tmp_path / f"state-{n}", hold_s=0.2) for n in (1, 2)
    ]
    try:
        # Rounds of bursts: every burst wakes both replicas at once and they race for the same rows.
        task_ids: list[uuid.UUID] = []
        for _ in range(4):
            task_ids += await hub.enqueue_burst(trust, [ping_payload(f"job {n}") for n in range(12)])
            await asyncio.sleep(0.3)
        for task_id in task_ids:
            done = await hub.wait_for_task(task_id, TaskStatus.COMPLETED, TaskStatus.FAILED, timeout_s=60)
            assert done.status is TaskStatus.COMPLETED
            assert done.attempt == 1
    finally:
        codes = [await replica.stop() for replica in replicas]
    assert codes == [0, 0]
    started = Counter(task for replica in replicas for what, task, _ in replica.lines() if what == "start")
    applied = Counter(task for replica in replicas for what, task, _ in replica.lines() if what == "applied")
    assert started == applied == Counter(task_ids)  # every task once, none twice
    # Each replica can hold 8 pings at a time and each takes 0.2 s: neither can have taken all 48.
    assert all(any(what == "start" for what, _, _ in replica.lines()) for replica in replicas)


async def test_a_long_poll_whose_agent_hung_up_leases_nothing(hub: RunningHub) -> None:
    trust, kit = await hub.register_trust("HUP")
    headers = {TRUST_KEY_HEADER: kit.api_key, PROTOCOL_HEADER: PROTOCOL_VERSION}
    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as http:
        poll = asyncio.create_task(http.post("/api/trust/tasks/lease", params={"wait": 25}, headers=headers, json={}))
        await eventually(lambda: current(hub.state.notifier.waiting), lambda n: n == 1)
        poll.cancel()  # the agent goes away mid-poll (the connection closes)
        with contextlib.suppress(asyncio.CancelledError):
            await poll
    # The hub lets go of the parked request at once instead of holding it for the rest of its 25 s ...
    await eventually(lambda: current(hub.state.notifier.waiting), lambda n: n == 0, timeout_s=3)
    # ... so work enqueued now waits for a live agent instead of being leased to nobody.
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("anyone there?"))
    await asyncio.sleep(0.5)
    assert (await hub.task(task_id)).status is TaskStatus.PENDING


# -- the hub's database goes away -------------------------------------------------------------------


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for this test alone: the test stops and restarts it."""
    with throwaway_server("flip-agent-dbdrop-") as server:
        yield server


@pytest.fixture
async def hub_on_own_pg(own_pg: EmbeddedPostgres, tmp_path: Path) -> AsyncIterator[RunningHub]:
    url = own_pg.url("flip")
    ensure_database(url)
    run_migrations(url)
    port = free_port()
    running = RunningHub(fast_hub_settings(tmp_path / "hub-state", port), url, port)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def _terminate_hub_connections(server: EmbeddedPostgres) -> int:
    with psycopg.connect(libpq_conninfo(server.url("postgres")), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'flip'"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _hub_get(hub: RunningHub, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.get(path, headers=headers)


async def test_dropped_database_connections_are_replaced_without_anyone_noticing(
    hub_on_own_pg: RunningHub, own_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    hub = hub_on_own_pg
    trust, kit = await hub.register_trust("DRP")
    # A long lease wait: work enqueued after the drop reaches the agent only if the hub's LISTEN
    # connection came back, not because the agent happened to ask again.
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent", FLIP_AGENT_LEASE_WAIT_S=25)
    run = await start_agent(settings, kit)
    try:
        before = await hub.enqueue(trust, TaskType.PING, ping_payload("before"))
        await hub.wait_for_task(before)
        assert _terminate_hub_connections(own_pg) >= 1  # pooled connections and the LISTEN connection
        await eventually(lambda: current(hub.state.notifier.listening.is_set()), bool, timeout_s=30)
        after = await hub.enqueue(trust, TaskType.PING, ping_payload("after"))
        done = await hub.wait_for_task(after, timeout_s=10)
        assert done.result is not None
        assert done.result["echo"] == "after"
        assert (await _hub_get(hub, "/api/health")).status_code == 200
        assert run.agent.counts["failed"] == 0
    finally:
        await run.stop()


async def test_while_the_database_is_down_requests_fail_cleanly_and_nothing_is_lost(
    hub_on_own_pg: RunningHub, own_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    hub = hub_on_own_pg
    trust, kit = await hub.register_trust("DWN")
    task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("across the outage"))
    gate = Gate()
    run = await start_agent(agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent"), kit,
                            registry=gate.registry())  # fmt: skip
    try:
        await eventually(lambda: current(gate.started), lambda n: n == 1)
        own_pg.pg_ctl("-m", "fast", "stop")
        try:
            # Users and machines both get the standard error body, a 503 and a hint when to retry.
            health = await _hub_get(hub, "/api/health")
            assert health.status_code == 503
            assert health.json() == {
                "detail": "the hub cannot reach its database; retry shortly",
                "code": "database_unavailable",
            }
            assert health.headers["Retry-After"] == "5"
            trust_headers = {TRUST_KEY_HEADER: kit.api_key, PROTOCOL_HEADER: PROTOCOL_VERSION}
            whoami = await _hub_get(hub, "/api/trust/whoami", trust_headers)
            assert (whoami.status_code, whoami.json()["code"]) == (503, "database_unavailable")
            # The task finishes while the hub cannot record it: the result waits in the agent's outbox.
            gate.release.set()
            await eventually(lambda: current(run.agent.counts["completed"]), lambda n: n == 1)
            await asyncio.sleep(1)  # a few delivery attempts and heartbeats meet the outage
            assert run.agent.status_report()[1]["hub"]["error"] is not None
            assert not run.task.done()  # the agent rides it out
        finally:
            own_pg.start_again()
        done = await hub.wait_for_task(task_id, timeout_s=60)
        assert done.result == {"echo": "across the outage", "attempt": 1}
        assert done.attempt == 1
        # New work flows again, and the hub answers health checks.
        later = await hub.enqueue(trust, TaskType.PING, ping_payload("after the outage"))
        await hub.wait_for_task(later, timeout_s=30)
        assert (await _hub_get(hub, "/api/health")).status_code == 200
    finally:
        gate.release.set()
        await run.stop()
    assert gate.started == 2  # the first task ran once, the later one once
    assert await hub.audit_actions(task_id) == ["task.enqueued", "task.completed"]
