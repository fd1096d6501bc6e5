"""Cohort tasks through the whole trust: hub queue → agent → data-access-api → OMOP → gate → agent → hub.

The hub, the agent and the data-access-api are the real applications (the latter two served over TCP
on 127.0.0.1), the OMOP data is the synthetic generator's, read through the read-only role.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import uvicorn
from trust_testing import RunningHub, agent_settings, free_port, start_agent, write_kit

from flip_api.db.models import Trust
from flip_core.cohort import CohortQueryPayload, CohortSnapshotInfo, CohortStatistics, PersistCohortPayload
from flip_core.contract import TrustKit
from flip_core.embedded_pg import throwaway_server
from flip_core.tasks import TaskStatus, TaskType
from flip_data_access.app import create_app
from flip_data_access.gate import DisclosureGate
from flip_data_access.omop import OmopDatabase
from flip_data_access.service import CohortService
from flip_data_access.snapshot import SnapshotStore
from flip_omop.loader import load_synthetic
from flip_omop.schema import create_readonly_role

pytestmark = pytest.mark.slow

PERSONS = 3000
DIABETES = (
    "SELECT p.person_id, p.year_of_birth FROM person p JOIN condition_occurrence c "
    "ON c.person_id = p.person_id WHERE c.condition_concept_id = 201826"
)


@pytest.fixture(scope="module")
def omop_reader_dsn() -> Iterator[str]:
    with throwaway_server("flip-cohort-tasks-") as server:
        with psycopg.connect(server.libpq_dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE omop")
        owner = server.libpq_dsn("omop")
        load_synthetic(owner, PERSONS, 11, "north")
        create_readonly_role(owner, "omop_reader", None)
        yield f"host={server.socket_dir} user=omop_reader dbname=omop"


class _Quiet(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own signals
        return


@dataclass
class TrustSide:
    url: str
    trust: Trust
    kit: TrustKit


@pytest.fixture
async def data_access(omop_reader_dsn: str, tmp_path: Path, hub: RunningHub) -> AsyncIterator[TrustSide]:
    """A registered trust and its data-access-api on 127.0.0.1 (guarded by the trust's internal key)."""
    trust, kit = await hub.register_trust("COH")
    service = CohortService(
        db=OmopDatabase(omop_reader_dsn, pool_size=2, statement_timeout_s=30),
        gate=DisclosureGate(10, noise=2),
        snapshots=SnapshotStore(tmp_path / "snapshots", max_bytes=10**8),
        seed=424242,
    )
    port = free_port()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = _Quiet(uvicorn.Config(create_app(service, kit.internal_key), log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the data-access-api did not start"
        await asyncio.sleep(0.02)
    try:
        yield TrustSide(f"http://127.0.0.1:{port}", trust, kit)
    finally:
        server.should_exit = True
        await task


async def test_a_cohort_query_comes_back_as_gated_statistics_and_a_bad_one_as_a_safe_error(
    hub: RunningHub, data_access: TrustSide, tmp_path: Path
) -> None:
    trust, kit = data_access.trust, data_access.kit
    kit_file = write_kit(tmp_path / "kit.env", kit)
    settings = agent_settings(kit_file, tmp_path / "agent", FLIP_AGENT_DATA_ACCESS_URL=data_access.url)
    run = await start_agent(settings, kit)
    try:
        query_id, project_id = uuid.uuid4(), uuid.uuid4()
        ask = CohortQueryPayload(query_id=query_id, project_id=project_id, version=1, sql=DIABETES, min_k=10)
        good = await hub.enqueue(trust, TaskType.COHORT_QUERY, ask.model_dump(mode="json"))
        done = await hub.wait_for_task(good, TaskStatus.COMPLETED, TaskStatus.FAILED)
        assert done.status is TaskStatus.COMPLETED, done.error
        stats = CohortStatistics.model_validate(done.result)
        assert stats.query_id == query_id
        assert stats.record_count.value is not None
        assert 100 < stats.record_count.value < PERSONS  # ~13 % prevalence in the north profile

        bad = CohortQueryPayload(query_id=uuid.uuid4(), project_id=project_id, version=2, sql="DELETE FROM person")
        refused = await hub.wait_for_task(
            await hub.enqueue(trust, TaskType.COHORT_QUERY, bad.model_dump(mode="json")),
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
        )
        assert refused.status is TaskStatus.FAILED
        assert refused.error is not None
        assert refused.error["code"] == "invalid_query"

        freeze = PersistCohortPayload(project_id=project_id, query_id=query_id, version=1, sql=DIABETES)
        frozen = await hub.wait_for_task(
            await hub.enqueue(trust, TaskType.PERSIST_COHORT, freeze.model_dump(mode="json")),
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
        )
        assert frozen.status is TaskStatus.COMPLETED, frozen.error
        info = CohortSnapshotInfo.model_validate(frozen.result)
        assert info.persons == stats.record_count  # the same persons, the same released count
        assert (tmp_path / "snapshots" / str(project_id) / "cohort.parquet").exists()
    finally:
        await run.stop()


async def test_without_a_data_access_api_cohort_tasks_fail_as_data_unavailable(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("NDA")
    settings = agent_settings(write_kit(tmp_path / "kit.env", kit), tmp_path / "agent")
    run = await start_agent(settings, kit)
    try:
        ask = CohortQueryPayload(query_id=uuid.uuid4(), project_id=uuid.uuid4(), version=1, sql=DIABETES)
        task_id = await hub.enqueue(trust, TaskType.COHORT_QUERY, ask.model_dump(mode="json"))
        failed = await hub.wait_for_task(task_id, TaskStatus.FAILED)
        assert failed.error is not None
        assert failed.error["code"] == "data_unavailable"
    finally:
        await run.stop()
