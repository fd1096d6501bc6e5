"""Initiating training: every check before anything is queued, the queue and its positions, stopping, the
watchdog's bound on waiting, and what deleting a model does to its job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import hub_testing
import pytest
from hub_testing import MakeUser, approved_project, register_test_trust
from sqlalchemy import select, update

from flip_api.core.config import HubSettings
from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, FlJob, ModelStatus
from flip_api.db.session import transaction
from flip_api.worker import run_once

R = RoleName.RESEARCHER
FILES = {"client_app.py": b"def train(model, config):\n    return {}\n", "models.py": b"X = 1\n", "config.json": b"{}"}


@pytest.fixture
def settings(settings: HubSettings) -> HubSettings:
    settings.worker_in_process = False
    settings.fl_queue_timeout_s = 3600
    return settings


class World:
    def __init__(self, owner: hub_testing.TestUser, admin: hub_testing.TestUser, viewer: hub_testing.TestUser) -> None:
        self.owner, self.admin, self.viewer = owner, admin, viewer
        self.trusts: list[hub_testing.RegisteredTrust] = []
        self.project = ""


@pytest.fixture
async def world(client: httpx.AsyncClient, hub: HubState, make_user: MakeUser) -> World:
    w = World(await make_user(R), await make_user(RoleName.ADMIN), await make_user(RoleName.VIEWER))
    w.trusts = [await register_test_trust(hub, code) for code in ("JA", "JB")]
    w.project = await approved_project(
        client, w.owner.headers, w.admin.headers, *w.trusts, member_ids=[str(w.viewer.id)]
    )
    return w


async def _model(client: httpx.AsyncClient, w: World, *, files: bool = True, **body: str) -> str:
    r = await client.post(
        f"/api/projects/{w.project}/models", headers=w.owner.headers, json={"name": uuid.uuid4().hex[:8], **body}
    )
    assert r.status_code == 201, r.text
    model_id: str = r.json()["id"]
    for name, data in FILES.items() if files else ():
        r = await client.put(f"/api/models/{model_id}/files/{name}", headers=w.owner.headers, content=data)
        assert r.status_code == 201, r.text
    return model_id


async def _initiate(client: httpx.AsyncClient, w: World, model_id: str, **body: object) -> httpx.Response:
    return await client.post(f"/api/models/{model_id}/jobs", headers=w.owner.headers, json=body)


async def test_nothing_is_queued_until_files_trusts_and_config_are_all_right(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    bare = await _model(client, w, files=False)
    r = await _initiate(client, w, bare)
    assert (r.status_code, r.json()["code"]) == (409, "missing_files")
    assert "client_app.py" in r.json()["detail"]

    model_id = await _model(client, w)
    outsider_trust = await register_test_trust(hub, "JC")  # registered, never approved this project
    refusals = [
        ({"trust_ids": [str(uuid.uuid4())]}, 400, "unknown_trust"),
        ({"trust_ids": [str(w.trusts[0].id), str(outsider_trust.id)]}, 400, "trust_not_approved"),
        ({"trust_ids": []}, 422, "validation_error"),
        ({"config": {"rounds": 0}}, 422, "invalid_config"),
        ({"config": {"rounds": 1001}}, 422, "invalid_config"),
        ({"config": {"strategy": "fedadam"}}, 422, "invalid_config"),  # a fed_opt strategy on a standard job
        ({"config": {"min_clients": 3}}, 422, "invalid_config"),  # 3 of 2 trusts
        ({"config": {"epochs": 3}}, 422, "invalid_config"),  # unknown key
        ({"config": {"round_timeout_s": 1}}, 422, "invalid_config"),
    ]
    for body, status, code in refusals:
        r = await _initiate(client, w, model_id, **body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    r = await client.get(f"/api/models/{model_id}/jobs", headers=w.owner.headers)
    assert r.json() == []
    assert (await client.get(f"/api/models/{model_id}", headers=w.owner.headers)).json()["status"] == "PENDING"

    evaluation = await _model(client, w, job_type="evaluation")
    r = await _initiate(client, w, evaluation)
    assert (r.status_code, r.json()["code"]) == (409, "missing_files")  # checkpoint.pt


async def test_a_queued_job_shows_its_place_and_locks_the_model_until_stopped(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    first, second = await _model(client, w), await _model(client, w)
    r = await _initiate(client, w, first, trust_ids=[str(w.trusts[0].id)], config={"rounds": 5, "seed": 7})
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["status"], job["queue_position"], job["attempt"]) == ("QUEUED", 1, 1)
    assert job["trust_ids"] == [str(w.trusts[0].id)]
    assert job["config"] == {
        "rounds": 5,
        "strategy": "fedavg",
        "min_clients": 1,
        "round_timeout_s": 600,
        "local_epochs": None,  # left to the researcher's config.json
        "learning_rate": None,
        "seed": 7,
    }
    r = await _initiate(client, w, second)
    assert r.json()["queue_position"] == 2
    assert r.json()["trust_ids"] == [str(t.id) for t in sorted(w.trusts, key=lambda t: t.code)]  # all approving

    model = (await client.get(f"/api/models/{second}", headers=w.viewer.headers)).json()
    assert (model["status"], model["editable"], model["job"]["queue_position"]) == ("QUEUED", False, 2)
    r = await client.put(f"/api/models/{second}/files/models.py", headers=w.owner.headers, content=b"Y = 2\n")
    assert (r.status_code, r.json()["code"]) == (409, "model_not_editable")
    r = await _initiate(client, w, second)
    assert (r.status_code, r.json()["code"]) == (409, "model_not_editable")
    r = await client.post(f"/api/models/{first}/stop", headers=w.viewer.headers)
    assert r.status_code == 403

    r = await client.post(f"/api/models/{first}/stop", headers=w.owner.headers)
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["reason"]) == ("STOPPED", "stopped by a researcher")
    model = (await client.get(f"/api/models/{second}", headers=w.owner.headers)).json()
    assert model["job"]["queue_position"] == 1  # moved up
    r = await client.post(f"/api/models/{first}/stop", headers=w.owner.headers)
    assert (r.status_code, r.json()["code"]) == (409, "nothing_to_stop")

    # Stopped models can change and train again: a new job, attempt 2.
    r = await _initiate(client, w, first)
    assert (r.status_code, r.json()["attempt"], r.json()["queue_position"]) == (201, 2, 2)
    jobs = (await client.get(f"/api/models/{first}/jobs", headers=w.viewer.headers)).json()
    assert [j["status"] for j in jobs] == ["QUEUED", "STOPPED"]
    async with hub.sessions() as s:
        actions = (await s.scalars(select(AuditEntry.action).where(AuditEntry.subject_id == first))).all()
    assert actions.count("model.training_requested") == 2
    assert actions.count("model.training_stopped") == 1


async def test_a_job_no_net_takes_fails_with_a_reason_instead_of_waiting_forever(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    model_id = await _model(client, w)
    job_id = (await _initiate(client, w, model_id)).json()["id"]
    report = await run_once(hub)
    assert report is not None
    assert report.jobs_expired == 0
    async with transaction(hub.sessions) as s:
        await s.execute(
            update(FlJob)
            .where(FlJob.id == uuid.UUID(job_id))
            .values(queued_at=datetime.now(UTC) - timedelta(seconds=hub.settings.fl_queue_timeout_s + 5))
        )
    report = await run_once(hub)
    assert report is not None
    assert report.jobs_expired == 1
    model = (await client.get(f"/api/models/{model_id}", headers=w.owner.headers)).json()
    assert (model["status"], model["job"]["status"]) == ("ERROR", "ERROR")
    assert model["job"]["reason"].startswith("no FLOWER FL net took the job within")
    assert model["editable"] is True  # fix what is needed, and initiate again


async def test_deleting_a_model_or_its_project_stops_its_queued_job(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    one, two = await _model(client, w), await _model(client, w)
    for model_id in (one, two):
        assert (await _initiate(client, w, model_id)).status_code == 201
    assert (await client.delete(f"/api/models/{one}", headers=w.owner.headers)).status_code == 204
    r = await client.delete(f"/api/projects/{w.project}", headers=w.owner.headers)
    assert r.status_code == 204, r.text
    async with hub.sessions() as s:
        jobs = (await s.scalars(select(FlJob))).all()
    assert {(j.status, j.reason) for j in jobs} == {
        (ModelStatus.STOPPED, "the model was deleted"),
        (ModelStatus.STOPPED, "the project was deleted"),
    }
