"""Imaging tasks through the whole trust: hub queue → agent → imaging-api → PACS, data-access-api → agent → hub.

The hub, the agent and the imaging-api are the real applications (the imaging-api served over TCP on
127.0.0.1); the imaging-api asks the real data-access-api service for accession ids and gated counts,
and retrieves from the embedded PACS over DICOM networking.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from imaging_service_testing import INTERNAL_KEY, ImagingWorld, approve, data_access, imaging_service, imaging_world
from trust_testing import RunningHub, agent_settings, free_port, start_agent, write_kit

from flip_api.db.models import Trust
from flip_core.contract import TrustKit
from flip_core.imaging import CreateImagingPayload, ImagingProjectPayload, ImagingStatus, StudyState
from flip_core.tasks import TaskStatus, TaskType
from flip_data_access.service import CohortService
from flip_imaging.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImagingWorld]:
    with imaging_world(tmp_path_factory.mktemp("imaging-world")) as built:
        yield built


class _Quiet(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own signals
        return


@pytest.fixture
async def cohorts(world: ImagingWorld, tmp_path: Path) -> AsyncIterator[CohortService]:
    async with data_access(world, tmp_path / "data-access") as service:
        yield service


@pytest.fixture
async def imaging_url(world: ImagingWorld, cohorts: CohortService, tmp_path: Path) -> AsyncIterator[str]:
    """The trust's imaging-api on 127.0.0.1, guarded by the (test) trust's internal key."""
    service = imaging_service(world, tmp_path / "imaging", cohorts)
    port = free_port()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = _Quiet(uvicorn.Config(create_app(service, INTERNAL_KEY), log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the imaging-api did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _trust(hub: RunningHub, code: str) -> tuple[Trust, TrustKit]:
    trust, kit = await hub.register_trust(code)
    # The imaging-api under test was built with a fixed internal key; the agent presents its kit's.
    return trust, kit.model_copy(update={"internal_key": INTERNAL_KEY})


async def _run(hub: RunningHub, trust: Trust, task_type: TaskType, payload: dict[str, object]) -> ImagingStatus:
    task = await hub.wait_for_task(
        await hub.enqueue(trust, task_type, payload), TaskStatus.COMPLETED, TaskStatus.FAILED, timeout_s=60
    )
    assert task.status is TaskStatus.COMPLETED, task.error
    assert task.result is not None
    return ImagingStatus.model_validate(task.result)


async def test_create_follow_reimport_and_delete_an_import_through_the_agent(
    hub: RunningHub, cohorts: CohortService, imaging_url: str, world: ImagingWorld, tmp_path: Path
) -> None:
    trust, kit = await _trust(hub, "IMG")
    kit_file = write_kit(tmp_path / "kit.env", kit)
    settings = agent_settings(kit_file, tmp_path / "agent", FLIP_AGENT_IMAGING_URL=imaging_url)
    run = await start_agent(settings, kit)
    try:
        project = uuid.uuid4()
        await approve(cohorts, project)
        create = CreateImagingPayload(project_id=project, query_id=uuid.uuid4(), dicom_to_nifti=True, min_k=12)
        started = await _run(hub, trust, TaskType.CREATE_IMAGING, create.model_dump(mode="json"))
        assert started.project_id == project
        assert started.k == 12  # the hub may raise k, and the trust applies it

        ask = ImagingProjectPayload(project_id=project).model_dump(mode="json")
        async with asyncio.timeout(90):
            while not (status := await _run(hub, trust, TaskType.GET_IMAGING_STATUS, ask)).complete:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert status.by_state[StudyState.READY].value == world.persons

        again = await _run(hub, trust, TaskType.REIMPORT_STUDIES, ask)
        assert again.complete  # nothing had failed: nothing to retry
        deleted = await _run(hub, trust, TaskType.DELETE_IMAGING, ask)
        assert deleted.deleted
        assert not list((tmp_path / "imaging" / "images" / str(project)).glob("*"))
    finally:
        await run.stop()


async def test_an_unapproved_project_fails_as_not_approved_and_no_imaging_api_as_unavailable(
    hub: RunningHub, imaging_url: str, tmp_path: Path
) -> None:
    trust, kit = await _trust(hub, "UNA")
    kit_file = write_kit(tmp_path / "kit.env", kit)
    settings = agent_settings(kit_file, tmp_path / "agent", FLIP_AGENT_IMAGING_URL=imaging_url)
    run = await start_agent(settings, kit)
    create = CreateImagingPayload(project_id=uuid.uuid4(), query_id=uuid.uuid4(), dicom_to_nifti=False)
    try:
        refused = await hub.wait_for_task(
            await hub.enqueue(trust, TaskType.CREATE_IMAGING, create.model_dump(mode="json")), TaskStatus.FAILED
        )
        assert refused.error is not None
        assert refused.error["code"] == "not_approved"
    finally:
        await run.stop()

    lone, lone_kit = await _trust(hub, "NOI")
    settings = agent_settings(write_kit(tmp_path / "lone.env", lone_kit), tmp_path / "lone")
    run = await start_agent(settings, lone_kit)
    try:
        failed = await hub.wait_for_task(
            await hub.enqueue(lone, TaskType.CREATE_IMAGING, create.model_dump(mode="json")), TaskStatus.FAILED
        )
        assert failed.error is not None
        assert failed.error["code"] == "imaging_unavailable"
    finally:
        await run.stop()
