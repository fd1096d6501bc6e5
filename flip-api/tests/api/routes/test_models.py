"""Models under approved projects and their files: create, edit, delete; upload, scan, promote or block;
download; the worker's sweep of files a crash left in quarantine.

Everything runs against the real hub (PostgreSQL, the local object store under the test's state folder)
and the real scanners (picklescan, bandit).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import hub_testing
import pytest
from hub_testing import (
    MakeUser,
    RegisteredTrust,
    approved_project,
    malicious_pickle,
    register_test_trust,
)
from s3_testing import REGION, new_bucket
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.config import HubSettings
from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, FileStatus, Model, ModelFile, ModelStatus
from flip_api.db.session import transaction
from flip_api.services.model_files import quarantine_key
from flip_api.storage import S3ObjectStore
from flip_api.worker import run_once

R = RoleName.RESEARCHER
CLIENT_APP = b"def train(model, data):\n    return model\n"
CONFIG = b'{"rounds": 3, "local_epochs": 1}'
RISKY_PY = b"import subprocess\n\n\ndef run(cmd):\n    subprocess.call(cmd, shell=True)\n    return eval(cmd)\n"


@pytest.fixture
def settings(settings: HubSettings) -> HubSettings:
    settings.worker_in_process = False  # the sweep is ticked by the tests
    settings.upload_max_bytes = 64 * 1024
    return settings


class World:
    def __init__(
        self,
        owner: hub_testing.TestUser,
        admin: hub_testing.TestUser,
        viewer: hub_testing.TestUser,
        outsider: hub_testing.TestUser,
    ) -> None:
        self.owner, self.admin, self.viewer, self.outsider = owner, admin, viewer, outsider
        self.trusts: list[RegisteredTrust] = []
        self.project = ""


@pytest.fixture
async def world(client: httpx.AsyncClient, hub: HubState, make_user: MakeUser) -> World:
    w = World(await make_user(R), await make_user(RoleName.ADMIN), await make_user(RoleName.VIEWER), await make_user(R))
    w.trusts = [await register_test_trust(hub, code) for code in ("MA", "MB")]
    w.project = await approved_project(
        client, w.owner.headers, w.admin.headers, *w.trusts, member_ids=[str(w.viewer.id)]
    )
    return w


async def _model(client: httpx.AsyncClient, w: World, name: str = "organ segmentation", **body: str) -> str:
    r = await client.post(f"/api/projects/{w.project}/models", headers=w.owner.headers, json={"name": name, **body})
    assert r.status_code == 201, r.text
    model_id: str = r.json()["id"]
    return model_id


def _stored(settings: HubSettings) -> list[str]:
    """Every object in the local store, as keys."""
    root = Path(settings.object_store_dir)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def _put(client: httpx.AsyncClient, w: World, model_id: str, name: str, data: bytes) -> httpx.Response:
    return await client.put(f"/api/models/{model_id}/files/{name}", headers=w.owner.headers, content=data)


# --------------------------------------------------------------------------- models


async def test_job_types_list_the_files_each_needs(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user(RoleName.VIEWER)
    r = await client.get("/api/job-types", headers=user.headers)
    assert r.status_code == 200
    kinds = {(t["backend"], t["job_type"]): [f["name"] for f in t["required_files"]] for t in r.json()}
    assert kinds[("FLOWER", "standard")] == ["client_app.py", "models.py", "config.json"]
    assert kinds[("NVFLARE", "standard")] == ["trainer.py", "models.py", "config.json"]
    assert "checkpoint.pt" in kinds[("FLOWER", "evaluation")]
    assert len(kinds) == 6


async def test_a_model_belongs_to_an_approved_project_and_trains_where_it_was_approved(
    client: httpx.AsyncClient, hub: HubState, make_user: MakeUser, world: World, db: AsyncSession
) -> None:
    w = world
    r = await client.post("/api/projects", headers=w.owner.headers, json={"name": "not yet", "has_imaging": False})
    unapproved = r.json()["id"]
    r = await client.post(f"/api/projects/{unapproved}/models", headers=w.owner.headers, json={"name": "m"})
    assert (r.status_code, r.json()["code"]) == (409, "project_not_approved")

    r = await client.post(
        f"/api/projects/{w.project}/models",
        headers=w.owner.headers,
        json={"name": "organ segmentation", "description": "UNet", "job_type": "fed_opt"},
    )
    assert r.status_code == 201, r.text
    model = r.json()
    assert (model["status"], model["backend"], model["job_type"], model["editable"]) == (
        "PENDING",
        "FLOWER",
        "fed_opt",
        True,
    )
    assert {t["code"] for t in model["trusts"]} == {"MA", "MB"}
    assert model["missing_files"] == ["client_app.py", "models.py", "config.json"]

    r = await client.post(
        f"/api/projects/{w.project}/models", headers=w.owner.headers, json={"name": "ORGAN Segmentation"}
    )
    assert (r.status_code, r.json()["code"]) == (409, "model_name_taken")
    r = await client.post(f"/api/projects/{w.project}/models", headers=w.owner.headers, json={"name": " "})
    assert r.status_code == 422
    r = await client.post(
        f"/api/projects/{w.project}/models", headers=w.owner.headers, json={"name": "x", "backend": "TORCH"}
    )
    assert r.status_code == 422

    # A member reads but cannot change; an outsider does not see it at all.
    r = await client.get(f"/api/models/{model['id']}", headers=w.viewer.headers)
    assert r.status_code == 200
    r = await client.get(f"/api/projects/{w.project}/models", headers=w.viewer.headers)
    assert [m["name"] for m in r.json()] == ["organ segmentation"]
    r = await client.patch(f"/api/models/{model['id']}", headers=w.viewer.headers, json={"name": "mine"})
    assert (r.status_code, r.json()["code"]) == (403, "not_project_owner")
    r = await client.get(f"/api/models/{model['id']}", headers=w.outsider.headers)
    assert (r.status_code, r.json()["code"]) == (404, "model_not_found")

    r = await client.patch(
        f"/api/models/{model['id']}", headers=w.owner.headers, json={"name": "organs", "backend": "NVFLARE"}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["missing_files"][0]) == ("organs", "trainer.py")
    r = await client.patch(f"/api/models/{model['id']}", headers=w.owner.headers, json={"rounds": 3})
    assert r.status_code == 422  # unknown fields are errors

    actions = (await db.scalars(select(AuditEntry.action).where(AuditEntry.subject_id == model["id"]))).all()
    assert list(actions) == ["model.created", "model.updated"]


async def test_a_model_changes_only_while_no_training_runs_and_deleting_it_stops_training(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    w = world
    model_id = await _model(client, w)
    assert (await _put(client, w, model_id, "config.json", CONFIG)).status_code == 201
    async with transaction(hub.sessions) as s:
        await s.execute(update(Model).where(Model.id == uuid.UUID(model_id)).values(status=ModelStatus.RUNNING))
    r = await client.patch(f"/api/models/{model_id}", headers=w.owner.headers, json={"description": "new"})
    assert (r.status_code, r.json()["code"]) == (409, "model_not_editable")
    r = await _put(client, w, model_id, "models.py", CLIENT_APP)
    assert (r.status_code, r.json()["code"]) == (409, "model_not_editable")
    (file,) = (await client.get(f"/api/models/{model_id}/files", headers=w.owner.headers)).json()
    r = await client.delete(f"/api/models/{model_id}/files/{file['id']}", headers=w.owner.headers)
    assert r.status_code == 409

    r = await client.delete(f"/api/models/{model_id}", headers=w.viewer.headers)
    assert r.status_code == 403
    r = await client.delete(f"/api/models/{model_id}", headers=w.owner.headers)
    assert r.status_code == 204
    async with hub.sessions() as s:
        row = await s.get(Model, uuid.UUID(model_id))
        assert row is not None
        assert row.status is ModelStatus.STOPPED
        assert row.deleted_at is not None
    assert (await client.get(f"/api/models/{model_id}", headers=w.owner.headers)).status_code == 404
    assert (await client.delete(f"/api/models/{model_id}", headers=w.owner.headers)).status_code == 404
    # The name is free again.
    await _model(client, w)


# --------------------------------------------------------------------------- files


async def test_clean_files_are_promoted_listed_and_downloaded_and_a_new_upload_replaces_the_old(
    client: httpx.AsyncClient, hub: HubState, settings: HubSettings, world: World
) -> None:
    w = world
    model_id = await _model(client, w)
    r = await _put(client, w, model_id, "client_app.py", CLIENT_APP)
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["status"], first["size"], first["sha256"]) == (
        "CLEAN",
        len(CLIENT_APP),
        hashlib.sha256(CLIENT_APP).hexdigest(),
    )
    assert (first["advisory"], first["findings"]) == (False, [])

    r = await _put(client, w, model_id, "models.py", RISKY_PY)
    assert r.status_code == 201, r.text
    risky = r.json()
    assert risky["status"] == "CLEAN"
    assert risky["advisory"] is True  # bandit is advice, not a block
    assert {f["tool"] for f in risky["findings"]} == {"bandit"}
    assert {f["line"] for f in risky["findings"]} >= {5, 6}
    assert (await _put(client, w, model_id, "config.json", CONFIG)).status_code == 201
    model = (await client.get(f"/api/models/{model_id}", headers=w.viewer.headers)).json()
    assert model["missing_files"] == []

    # Download (a reader may): the same bytes, with the checksum as ETag.
    r = await client.get(f"/api/models/{model_id}/files/{first['id']}/content", headers=w.viewer.headers)
    assert r.status_code == 200
    assert r.content == CLIENT_APP
    assert r.headers["etag"] == f'"{first["sha256"]}"'
    assert "client_app.py" in r.headers["content-disposition"]
    r = await client.get(f"/api/models/{model_id}/files/{first['id']}/content", headers=w.outsider.headers)
    assert r.status_code == 404

    # A new version of a name replaces the old one once clean: one row, new bytes, old bytes gone.
    newer = CLIENT_APP + b"# v2\n"
    r = await _put(client, w, model_id, "client_app.py", newer)
    assert r.status_code == 201
    files = (await client.get(f"/api/models/{model_id}/files", headers=w.owner.headers)).json()
    assert sorted(f["name"] for f in files) == ["client_app.py", "config.json", "models.py"]
    assert next(f for f in files if f["name"] == "client_app.py")["sha256"] == hashlib.sha256(newer).hexdigest()
    stored = _stored(settings)
    assert len(stored) == 3  # three promoted files
    assert all(p.startswith("models/") for p in stored)  # nothing left in quarantine

    # Deleting a file removes its bytes; it is then missing again.
    r = await client.delete(f"/api/models/{model_id}/files/{r.json()['id']}", headers=w.owner.headers)
    assert r.status_code == 204
    assert len(_stored(settings)) == 2
    model = (await client.get(f"/api/models/{model_id}", headers=w.owner.headers)).json()
    assert model["missing_files"] == ["client_app.py"]


async def test_a_malicious_pickle_is_blocked_and_deleted_and_the_reason_is_shown(
    client: httpx.AsyncClient, hub: HubState, settings: HubSettings, world: World, db: AsyncSession
) -> None:
    w = world
    model_id = await _model(client, w, job_type="evaluation")
    r = await _put(client, w, model_id, "checkpoint.pt", malicious_pickle())
    assert (r.status_code, r.json()["code"]) == (422, "file_blocked")
    assert "system" in r.json()["detail"]
    (row,) = (await client.get(f"/api/models/{model_id}/files", headers=w.owner.headers)).json()
    assert row["status"] == "BLOCKED"
    assert row["sha256"] == hashlib.sha256(malicious_pickle()).hexdigest()
    assert any("system" in f["message"] and f["tool"] == "picklescan" for f in row["findings"])
    assert _stored(settings) == []  # the bytes are gone
    r = await client.get(f"/api/models/{model_id}/files/{row['id']}/content", headers=w.owner.headers)
    assert (r.status_code, r.json()["code"]) == (409, "file_not_clean")
    model = (await client.get(f"/api/models/{model_id}", headers=w.owner.headers)).json()
    assert "checkpoint.pt" in model["missing_files"]
    blocked = await db.scalar(select(AuditEntry).where(AuditEntry.action == "model.file_blocked"))
    assert blocked is not None
    assert blocked.details["name"] == "checkpoint.pt"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("run.exe", "extension_not_allowed"),
        ("weights.zip", "archive_refused"),
        ("data.tar.gz", "archive_refused"),
        (".hidden.py", "bad_file_name"),
        ("%2E%2E", "bad_file_name"),  # ".." once decoded (a literal ".." is resolved by the client)
        ("a%5Cb.py", "bad_file_name"),  # a backslash
    ],
)
async def test_names_the_hub_refuses_never_reach_the_store(
    client: httpx.AsyncClient, settings: HubSettings, world: World, name: str, code: str
) -> None:
    model_id = await _model(client, world)
    r = await _put(client, world, model_id, name, b"x")
    assert (r.status_code, r.json()["code"]) == (400, code), r.text
    assert (await client.get(f"/api/models/{model_id}/files", headers=world.owner.headers)).json() == []
    assert _stored(settings) == []


async def test_a_file_over_the_size_cap_is_refused_and_leaves_nothing(
    client: httpx.AsyncClient, settings: HubSettings, world: World
) -> None:
    model_id = await _model(client, world)
    big = b"#" * (settings.upload_max_bytes + 1)
    r = await _put(client, world, model_id, "models.py", big)
    assert (r.status_code, r.json()["code"]) == (413, "file_too_large")

    async def chunks() -> object:  # no Content-Length: the cap is enforced while streaming
        for _ in range(3):
            yield b"#" * (settings.upload_max_bytes // 2)

    r = await client.put(f"/api/models/{model_id}/files/models.py", headers=world.owner.headers, content=chunks())
    assert (r.status_code, r.json()["code"]) == (413, "file_too_large")
    assert (await client.get(f"/api/models/{model_id}/files", headers=world.owner.headers)).json() == []
    assert _stored(settings) == []


async def test_presigned_uploads_need_an_object_store_that_offers_them(client: httpx.AsyncClient, world: World) -> None:
    model_id = await _model(client, world)
    r = await client.post(
        f"/api/models/{model_id}/uploads", headers=world.owner.headers, json={"name": "models.py", "size": 10}
    )
    assert (r.status_code, r.json()["code"]) == (409, "presigned_upload_unavailable")
    assert (await client.get(f"/api/models/{model_id}/files", headers=world.owner.headers)).json() == []


async def test_the_sweep_rescans_a_file_a_crash_left_in_quarantine_and_drops_abandoned_uploads(
    client: httpx.AsyncClient, hub: HubState, world: World
) -> None:
    model_id = uuid.UUID(await _model(client, world))
    long_ago = datetime.now(UTC) - timedelta(seconds=hub.settings.scan_stuck_s + 60)
    stuck, abandoned, fresh = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    hub.objects.put_stream(quarantine_key(model_id, stuck), [CONFIG], max_bytes=1024)
    hub.objects.put_stream(quarantine_key(model_id, fresh), [CONFIG], max_bytes=1024)
    async with transaction(hub.sessions) as s:
        for file_id, status, name in (
            (stuck, FileStatus.SCANNING, "config.json"),
            (abandoned, FileStatus.UPLOADING, "models.py"),
            (fresh, FileStatus.SCANNING, "client_app.py"),
        ):
            s.add(
                ModelFile(
                    id=file_id,
                    model_id=model_id,
                    name=name,
                    status=status,
                    object_key=quarantine_key(model_id, file_id),
                    findings=[],
                    advisory=False,
                    scan_started_at=datetime.now(UTC) if file_id == fresh else long_ago,
                    upload_expires_at=long_ago if status is FileStatus.UPLOADING else None,
                )
            )
    report = await run_once(hub)
    assert report is not None
    assert (report.files_rescanned, report.uploads_expired) == (1, 1)
    async with hub.sessions() as s:
        rows = {r.id: r for r in (await s.scalars(select(ModelFile))).all()}
    assert rows[stuck].status is FileStatus.CLEAN
    assert rows[stuck].sha256 == hashlib.sha256(CONFIG).hexdigest()
    assert abandoned not in rows
    assert rows[fresh].status is FileStatus.SCANNING  # still within its time: left alone
    assert hub.objects.stat(quarantine_key(model_id, stuck)) is None


async def test_with_s3_files_go_straight_to_the_bucket_and_are_scanned_before_promotion(
    client: httpx.AsyncClient, hub: HubState, world: World, s3_endpoint: str
) -> None:
    """The hub hands out a presigned POST, the uploader sends the bytes to the bucket (moto's real server),
    ``complete`` scans them; downloads are redirects to short-lived presigned URLs."""
    hub.objects = S3ObjectStore(new_bucket(s3_endpoint), prefix="hub", region=REGION, endpoint_url=s3_endpoint)
    w = world
    model_id = await _model(client, w, job_type="evaluation")

    async def presigned(name: str, data: bytes) -> str:
        r = await client.post(
            f"/api/models/{model_id}/uploads", headers=w.owner.headers, json={"name": name, "size": len(data)}
        )
        assert r.status_code == 201, r.text
        grant = r.json()
        assert grant["file"]["status"] == "UPLOADING"
        async with httpx.AsyncClient() as bucket:
            sent = await bucket.post(grant["upload"]["url"], data=grant["upload"]["fields"], files={"file": data})
        assert sent.status_code in (200, 204), sent.text
        file_id: str = grant["file"]["id"]
        return file_id

    clean_id = await presigned("client_app.py", CLIENT_APP)
    r = await client.post(f"/api/models/{model_id}/files/{clean_id}/complete", headers=w.owner.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["sha256"]) == ("CLEAN", hashlib.sha256(CLIENT_APP).hexdigest())
    r = await client.post(f"/api/models/{model_id}/files/{clean_id}/complete", headers=w.owner.headers)
    assert (r.status_code, r.json()["code"]) == (409, "file_not_uploading")

    r = await client.get(f"/api/models/{model_id}/files/{clean_id}/content", headers=w.viewer.headers)
    assert r.status_code == 307
    async with httpx.AsyncClient() as bucket:
        fetched = await bucket.get(r.headers["location"])
    assert fetched.content == CLIENT_APP

    bad_id = await presigned("checkpoint.pt", malicious_pickle())
    r = await client.post(f"/api/models/{model_id}/files/{bad_id}/complete", headers=w.owner.headers)
    assert (r.status_code, r.json()["code"]) == (422, "file_blocked")
    assert hub.objects.stat(quarantine_key(uuid.UUID(model_id), uuid.UUID(bad_id))) is None

    # Asked to complete before anything arrived: refused, and the upload stays open until it expires.
    r = await client.post(
        f"/api/models/{model_id}/uploads", headers=w.owner.headers, json={"name": "config.json", "size": 10}
    )
    waiting = r.json()["file"]["id"]
    r = await client.post(f"/api/models/{model_id}/files/{waiting}/complete", headers=w.owner.headers)
    assert (r.status_code, r.json()["code"]) == (409, "upload_missing")
    r = await client.post(
        f"/api/models/{model_id}/uploads", headers=w.owner.headers, json={"name": "big.pt", "size": 10**12}
    )
    assert (r.status_code, r.json()["code"]) == (413, "file_too_large")
