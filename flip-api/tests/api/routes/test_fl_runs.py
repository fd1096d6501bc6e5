"""Training on a real Flower net, end to end: the hub (served on a real port), an FL net (``flip fl-net``'s
control API and its SuperLink) and the trusts' SuperNodes as their agents start them.

Trusts AAA and BBB approved the project; CCC is registered and connected to the net but never approved,
so it must never receive the run. The worker's scheduler is driven tick by tick.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from hub_testing import MakeUser, RegisteredTrust, approved_project, register_test_trust
from sqlalchemy import select

from flip_api.core.config import HubSettings
from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import CohortQuery, CohortSnapshot, FlJob, FlNet, NetStatus
from flip_api.db.session import transaction
from flip_api.services import fl_nets, fl_runs
from flip_core.fl_events import INTERNAL_KEY_HEADER, RunFailed
from flip_fl.flower.net import free_port
from flip_fl.flower.service import NetConfig, create_app
from flip_trust_api.fl_client import FlClients, TrainerEnvironment
from flip_trust_api.fl_protocol import FlNetInfo

pytestmark = pytest.mark.slow

RESEARCHER = Path(__file__).resolve().parents[4] / "fl" / "tests" / "flower" / "researcher"
TERMINAL = {"RESULTS_UPLOADED", "ERROR", "STOPPED", "RESULTS_UPLOAD_FAILED"}


@pytest.fixture
def settings(settings: HubSettings) -> HubSettings:
    settings.worker_in_process = False
    settings.fl_report_grace_s = 5
    return settings


class _ThreadServer:
    """A uvicorn server on its own thread and event loop (the FL net's control API)."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "the net's control API stopped"
            assert time.monotonic() < deadline, "the net's control API did not start"
            time.sleep(0.1)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture
async def hub_port(app: FastAPI) -> AsyncIterator[int]:
    """The hub served on a real loopback port (the net's FL server reports to it)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    yield port
    server.should_exit = True
    await task


class World:
    def __init__(self) -> None:
        self.trusts: dict[str, RegisteredTrust] = {}
        self.clients: dict[str, FlClients] = {}
        self.headers: dict[str, str] = {}
        self.admin: dict[str, str] = {}
        self.project = ""
        self.net_dir = Path()


@pytest.fixture
async def world(
    client: httpx.AsyncClient, hub: HubState, make_user: MakeUser, hub_port: int, tmp_path: Path
) -> AsyncIterator[World]:
    w = World()
    owner, admin = await make_user(RoleName.RESEARCHER), await make_user(RoleName.ADMIN)
    w.headers, w.admin = owner.headers, admin.headers
    for code in ("AAA", "BBB", "CCC"):
        w.trusts[code] = await register_test_trust(hub, code)
    w.project = await approved_project(client, owner.headers, admin.headers, w.trusts["AAA"], w.trusts["BBB"])
    async with transaction(hub.sessions) as db:  # the cohorts AAA and BBB froze (as their agents report them)
        query = (await db.scalars(select(CohortQuery).where(CohortQuery.project_id == uuid.UUID(w.project)))).one()
        for code in ("AAA", "BBB"):
            digest = hashlib.sha256(code.encode()).hexdigest()
            db.add(
                CohortSnapshot(
                    project_id=query.project_id,
                    trust_id=w.trusts[code].id,
                    query_id=query.id,
                    persons=40,
                    rows=40,
                    sha256=digest,
                    created_at=datetime.now(UTC),
                )
            )

    net_port = free_port()
    r = await client.post(
        "/api/fl/nets",
        headers=admin.headers,
        json={"name": "flower-test", "endpoint": f"http://127.0.0.1:{net_port}"},
    )
    assert r.status_code == 201, r.text
    w.net_dir = tmp_path / "net"
    config = NetConfig(
        name="flower-test",
        state_dir=w.net_dir,
        key=r.json()["key"],
        hub_report_url=f"http://127.0.0.1:{hub_port}/api/fl",
    )
    with _ThreadServer(create_app(config), net_port):
        # Each trust's agent: its SuperNode key to the hub, then (after the worker registered the keys on the
        # net and learnt its address) a SuperNode per net the hub lists.
        for code, trust in w.trusts.items():
            trainer = TrainerEnvironment(None, None, None, tmp_path / code / "cache")
            w.clients[code] = FlClients(code, tmp_path / code, trainer)
            body = {"public_key": w.clients[code].public_key}
            r = await client.put("/api/trust/fl/node-key", headers=trust.headers, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["changed"]
        report = await fl_runs.tick(hub)
        assert report.nodes_registered == 3
        for code, trust in w.trusts.items():
            r = await client.get("/api/trust/fl/nets", headers=trust.headers)
            assert r.status_code == 200, r.text
            [net] = r.json()
            assert net["name"] == "flower-test"
            assert "BEGIN CERTIFICATE" in net["ca_cert"]
            await asyncio.to_thread(w.clients[code].reconcile, [FlNetInfo.model_validate(net)])
        try:
            yield w
        finally:
            for fl_client in w.clients.values():
                await asyncio.to_thread(fl_client.stop)


async def _model(client: httpx.AsyncClient, w: World, config: dict[str, Any]) -> str:
    r = await client.post(f"/api/projects/{w.project}/models", headers=w.headers, json={"name": uuid.uuid4().hex[:8]})
    assert r.status_code == 201, r.text
    model_id: str = r.json()["id"]
    files = {
        "client_app.py": (RESEARCHER / "client_app.py").read_bytes(),
        "models.py": (RESEARCHER / "models.py").read_bytes(),
        "config.json": json.dumps(config).encode(),
    }
    for name, data in files.items():
        r = await client.put(f"/api/models/{model_id}/files/{name}", headers=w.headers, content=data)
        assert r.status_code == 201, r.text
    return model_id


async def _train(client: httpx.AsyncClient, hub: HubState, w: World, model_id: str, **config: Any) -> str:
    trusts = [str(w.trusts[c].id) for c in ("AAA", "BBB")]
    r = await client.post(
        f"/api/models/{model_id}/jobs",
        headers=w.headers,
        json={"trust_ids": trusts, "config": {"rounds": 2, "round_timeout_s": 120, "seed": 3, **config}},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _until(
    client: httpx.AsyncClient, hub: HubState, w: World, model_id: str, job_id: str, statuses: set[str]
) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        await fl_runs.tick(hub)
        r = await client.get(f"/api/models/{model_id}/jobs/{job_id}", headers=w.headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["job"]["status"] in statuses:
            return body
        await asyncio.sleep(1.0)
    raise AssertionError(f"job {job_id} did not reach {statuses}: {body['job']}")


async def _net_state(hub: HubState) -> tuple[NetStatus, uuid.UUID | None]:
    async with transaction(hub.sessions) as db:
        net = (await db.scalars(select(FlNet))).one()
        return net.status, net.current_job_id


async def test_a_job_trains_on_the_selected_trusts_and_its_model_and_lineage_are_downloadable(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    model_id = await _model(client, w, {"epochs": 3})
    job_id = await _train(client, hub, w, model_id)
    body = await _until(client, hub, w, model_id, job_id, TERMINAL)
    job = body["job"]
    assert job["status"] == "RESULTS_UPLOADED", body
    assert len(job["bundle_sha256"]) == 64

    events = body["events"]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_completed"
    train = [e for e in events if e["event"] == "round_completed" and e["payload"]["phase"] == "train"]
    assert [e["round"] for e in train] == [1, 2]
    for event in train:
        assert set(event["payload"]["metrics"]) == {"AAA", "BBB"}  # CCC never took part
        assert event["payload"]["aggregated"]["num_examples"] > 0
    assert {r["name"] for r in body["results"]} == {"model.pt", "lineage.json"}

    r = await client.get(f"/api/models/{model_id}/jobs/{job_id}/results/model.pt", headers=w.headers)
    assert r.status_code == 200
    state = torch.load(io.BytesIO(r.content), weights_only=True)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    r = await client.get(f"/api/models/{model_id}/jobs/{job_id}/results/lineage.json", headers=w.headers)
    lineage = r.json()
    assert lineage["bundle_sha256"] == job["bundle_sha256"]
    assert lineage["selected_trusts"] == ["AAA", "BBB"]
    assert {c: v["sha256"] for c, v in lineage["cohort_snapshots"].items()} == {
        c: hashlib.sha256(c.encode()).hexdigest() for c in ("AAA", "BBB")
    }
    assert lineage["seed"] == 3
    assert lineage["project_id"] == w.project
    assert {"flwr", "torch", "numpy", "python"} <= set(lineage["versions"])

    r = await client.get(f"/api/models/{model_id}", headers=w.headers)
    assert r.json()["status"] == "RESULTS_UPLOADED"
    # The unselected trust never installed the app nor ran anything of it.
    ccc_apps = list((w.clients["CCC"].root / "nets").glob("*/flwr-home/apps/*"))
    assert ccc_apps == []
    # The net is released once the run has ended.
    await fl_runs.tick(hub)
    assert await _net_state(hub) == (NetStatus.AVAILABLE, None)


async def test_a_failing_trainer_ends_in_error_with_a_clear_reason_and_reports_need_the_net_key(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    model_id = await _model(client, w, {"fail_trusts": ["AAA"]})
    job_id = await _train(client, hub, w, model_id, rounds=1)  # min_clients defaults to both trusts
    body = await _until(client, hub, w, model_id, job_id, TERMINAL)
    assert body["job"]["status"] == "ERROR"
    reason = body["job"]["reason"]
    assert "round 1" in reason, reason
    assert "min_clients is 2" in reason, reason
    assert "1234567890" not in json.dumps(body)  # the trainer's message (it quotes a patient) stays at the trust
    dropped = [e["payload"] for e in body["events"] if e["event"] == "trust_dropped"]
    assert dropped
    assert dropped[0]["trust"] == "AAA"
    assert "RuntimeError" in dropped[0]["reason"]
    await fl_runs.tick(hub)
    assert await _net_state(hub) == (NetStatus.AVAILABLE, None)
    r = await client.get(f"/api/models/{model_id}/jobs/{job_id}/results/model.pt", headers=w.headers)
    assert r.status_code == 404

    # Reports need the key of the net that runs the job, and a well-formed event.
    event = RunFailed(job_id=str(uuid.uuid4()), run_id=1, reason="x").model_dump_json().encode()
    r = await client.post("/api/fl/events", headers={INTERNAL_KEY_HEADER: "flip_nk_wrong"}, content=event)
    assert (r.status_code, r.json()["code"]) == (401, "invalid_net_key")
    async with transaction(hub.sessions) as db:
        key = fl_nets.net_key(hub.data_key, (await db.scalars(select(FlNet))).one())
    r = await client.post("/api/fl/events", headers={INTERNAL_KEY_HEADER: key}, content=event)
    assert (r.status_code, r.json()["code"]) == (404, "job_not_found")
    r = await client.post("/api/fl/events", headers={INTERNAL_KEY_HEADER: key}, content=b'{"event": "nope"}')
    assert (r.status_code, r.json()["code"]) == (422, "invalid_event")


async def test_stopping_a_running_job_aborts_its_run_and_late_reports_are_ignored(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    model_id = await _model(client, w, {"sleep_s": 60})
    job_id = await _train(client, hub, w, model_id, rounds=1)
    await _until(client, hub, w, model_id, job_id, {"RUNNING"})
    r = await client.post(f"/api/models/{model_id}/stop", headers=w.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "STOPPED"
    await fl_runs.tick(hub)  # the scheduler aborts the run on the net and frees it
    assert await _net_state(hub) == (NetStatus.AVAILABLE, None)
    async with transaction(hub.sessions) as db:
        job = await db.get(FlJob, uuid.UUID(job_id))
        assert job is not None
        assert job.status.value == "STOPPED"
    # The run is stopped on the net too.
    async with transaction(hub.sessions) as db:
        net = (await db.scalars(select(FlNet))).one()
        endpoint, key = net.endpoint, fl_nets.net_key(hub.data_key, net)
    async with fl_nets.NetClient(endpoint, key) as net_client:
        deadline = time.monotonic() + 60
        while (await net_client.status(uuid.UUID(job_id)))["status"] != "finished":
            assert time.monotonic() < deadline, "the run was not stopped on the net"
            await asyncio.sleep(1.0)
    # A late report about the stopped job is ignored; the model stays STOPPED.
    late = RunFailed(job_id=job_id, run_id=1, reason="round 1 (train): too late")
    r = await client.post("/api/fl/events", headers={INTERNAL_KEY_HEADER: key}, content=late.model_dump_json().encode())
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": False}
    r = await client.get(f"/api/models/{model_id}", headers=w.headers)
    assert r.json()["status"] == "STOPPED"
