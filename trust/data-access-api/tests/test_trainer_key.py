"""The trainer key opens the two row-level reads FL trainers need, and nothing else.

The internal key still works everywhere; without ``FLIP_TRAINER_KEY`` configured the trainer header is
never accepted; a wrong trainer key is refused like a wrong internal key.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from data_access_testing import make_service, new_id
from fastapi.routing import APIRoute, iter_route_contexts

from flip_core.cohort import PersistCohortPayload
from flip_core.contract import INTERNAL_KEY_HEADER, TrustKit
from flip_data_access.app import TRAINER_KEY_HEADER, create_app
from flip_data_access.config import DataAccessConfigError, DataAccessSettings
from flip_data_access.service import CohortService

INTERNAL_KEY = "flip_ik_" + "t" * 40
TRAINER_KEY = "flip_tk_" + "r" * 40
TRAINER = {TRAINER_KEY_HEADER: TRAINER_KEY}
TRAINER_ROUTES = {"/cohort/dataframe", "/cohort/accession-ids"}
COHORT = (
    "SELECT person_id, accession_id, modality_source_value FROM image_occurrence WHERE modality_source_value = 'CT'"
)


@pytest.fixture
async def frozen(omop_dsn: str, tmp_path: Path) -> AsyncIterator[tuple[CohortService, uuid.UUID]]:
    """The service with one approved project's cohort frozen (75 CT studies, 75 persons)."""
    service = make_service(omop_dsn, tmp_path)
    await service.db.open()
    try:
        project = new_id()
        await service.freeze(PersistCohortPayload(project_id=project, query_id=new_id(), version=1, sql=COHORT))
        yield service, project
    finally:
        await service.db.close()


def _client(service: CohortService, trainer_key: str | None) -> httpx.AsyncClient:
    app = create_app(service, INTERNAL_KEY, trainer_key)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://data-access")


async def test_the_trainer_key_reads_the_frozen_cohort(frozen: tuple[CohortService, uuid.UUID]) -> None:
    service, project = frozen
    async with _client(service, TRAINER_KEY) as client:
        frame = await client.post(
            "/cohort/dataframe",
            headers=TRAINER,
            json={"project_id": str(project), "columns": ["accession_id", "person_id"]},
        )
        assert frame.status_code == 200, frame.text
        columns = frame.json()["columns"]
        assert list(columns) == ["accession_id", "person_id"]
        assert len(columns["person_id"]) == 75
        ids = await client.post("/cohort/accession-ids", headers=TRAINER, json={"project_id": str(project)})
        assert ids.status_code == 200, ids.text
        assert len(ids.json()["accession_ids"]) == 75
        internal = await client.post(
            "/cohort/accession-ids", headers={INTERNAL_KEY_HEADER: INTERNAL_KEY}, json={"project_id": str(project)}
        )
        assert internal.json() == ids.json()  # the internal key still reads them too


async def test_the_trainer_key_opens_no_other_route(frozen: tuple[CohortService, uuid.UUID]) -> None:
    service, project = frozen
    app = create_app(service, INTERNAL_KEY, TRAINER_KEY)
    routes = [c.route for c in iter_route_contexts(app.router.routes) if isinstance(c.route, APIRoute)]
    others = {r.path for r in routes} - TRAINER_ROUTES - {"/health"}
    assert others >= {"/cohort/statistics", "/cohort/snapshot", "/cohort/study-counts"}
    body = {
        "project_id": str(project),
        "query_id": str(new_id()),
        "version": 1,
        "sql": COHORT,
        "groups": {"ready": ["ACC4-CT"]},
    }
    async with _client(service, TRAINER_KEY) as client:
        for path in sorted(others):
            refused = await client.post(path, headers=TRAINER, json=body)
            assert refused.status_code == 401, path
            assert refused.json() == {"detail": "internal key missing or wrong", "code": "not_authenticated"}, path


@pytest.mark.parametrize("configured", [TRAINER_KEY, None], ids=["wrong-key", "not-configured"])
async def test_a_wrong_or_unconfigured_trainer_key_is_refused(
    frozen: tuple[CohortService, uuid.UUID], configured: str | None
) -> None:
    service, project = frozen
    presented = TRAINER_KEY[:-1] + "x" if configured else TRAINER_KEY
    async with _client(service, configured) as client:
        for path in sorted(TRAINER_ROUTES):
            for headers in ({TRAINER_KEY_HEADER: presented}, {TRAINER_KEY_HEADER: ""}):
                refused = await client.post(path, headers=headers, json={"project_id": str(project)})
                assert refused.status_code == 401, path
                assert refused.json()["code"] == "not_authenticated"


def test_the_setting_is_optional_secret_and_must_differ_from_the_internal_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kit = TrustKit(
        hub_url="http://hub",
        trust_id=uuid.uuid4(),
        trust_code="KCH",
        trust_name="King's",
        api_key="a" * 32,
        payload_key_id="k1",
        payload_key="p" * 32,
        internal_key=INTERNAL_KEY,
    )
    monkeypatch.delenv("FLIP_TRAINER_KEY", raising=False)
    assert DataAccessSettings().trainer_secret(kit) is None
    monkeypatch.setenv("FLIP_TRAINER_KEY", "")
    assert DataAccessSettings().trainer_secret(kit) is None
    monkeypatch.setenv("FLIP_TRAINER_KEY", TRAINER_KEY)
    settings = DataAccessSettings()
    assert TRAINER_KEY not in repr(settings)
    assert settings.trainer_secret(kit) == TRAINER_KEY
    monkeypatch.setenv("FLIP_TRAINER_KEY", "too-short")
    with pytest.raises(ValueError, match="FLIP_TRAINER_KEY"):
        DataAccessSettings()
    monkeypatch.setenv("FLIP_TRAINER_KEY", INTERNAL_KEY)
    with pytest.raises(DataAccessConfigError, match="differ"):
        DataAccessSettings().trainer_secret(kit)
