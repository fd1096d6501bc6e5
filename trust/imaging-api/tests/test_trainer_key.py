"""The trainer key opens the two image routes FL trainers read, and nothing else.

The internal key still works everywhere; without ``FLIP_TRAINER_KEY`` configured the trainer header is
never accepted; a wrong trainer key is refused like a wrong internal key.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from imaging_store_testing import INTERNAL_KEY, plant_ready_study, store_service

from flip_core.contract import INTERNAL_KEY_HEADER, TrustKit
from flip_imaging.app import TRAINER_KEY_HEADER, create_app
from flip_imaging.config import ImagingConfigError, ImagingSettings
from flip_imaging.service import ImagingService

TRAINER_KEY = "flip_tk_" + "r" * 40
TRAINER = {TRAINER_KEY_HEADER: TRAINER_KEY}
PROJECT = uuid.UUID("00000000-0000-4000-8000-0000000000b1")
ACCESSION = "ACC4-CT"
VOLUME = b"\x1f\x8b pretend NIfTI volume"
LISTING = f"/imaging/projects/{PROJECT}/studies/{ACCESSION}/nifti"
FILE = f"{LISTING}/series.nii.gz"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ImagingService]:
    imaging = store_service(tmp_path / "imaging")
    plant_ready_study(imaging, PROJECT, ACCESSION, {"nifti/series.nii.gz": VOLUME, "dicom/1.2.3.dcm": b"DICM"})
    await imaging.start()
    try:
        yield imaging
    finally:
        await imaging.stop()
        await imaging.cohorts.aclose()


def _client(service: ImagingService, trainer_key: str | None) -> httpx.AsyncClient:
    app = create_app(service, INTERNAL_KEY, trainer_key)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://imaging")


async def test_the_trainer_key_lists_and_reads_a_ready_study(service: ImagingService) -> None:
    async with _client(service, TRAINER_KEY) as client:
        listing = await client.get(LISTING, headers=TRAINER)
        assert listing.status_code == 200, listing.text
        digest = hashlib.sha256(VOLUME).hexdigest()
        assert listing.json() == {
            "kind": "nifti",
            "files": [{"name": "series.nii.gz", "bytes": len(VOLUME), "sha256": digest}],
        }
        got = await client.get(FILE, headers=TRAINER)
        assert (got.status_code, got.content, got.headers["etag"]) == (200, VOLUME, f'"{digest}"')
        cached = await client.get(FILE, headers={**TRAINER, "If-None-Match": f'"{digest}"'})
        assert cached.status_code == 304
        internal = await client.get(FILE, headers={INTERNAL_KEY_HEADER: INTERNAL_KEY})
        assert internal.content == VOLUME  # the internal key still reads them too


async def test_the_trainer_key_opens_no_other_route(service: ImagingService) -> None:
    app = create_app(service, INTERNAL_KEY, TRAINER_KEY)
    routes = [c.route for c in iter_route_contexts(app.router.routes) if isinstance(c.route, APIRoute)]
    others = {r.path for r in routes if (r.openapi_extra or {}).get("x-flip-disclosure") != "row-level"} - {"/health"}
    assert others == {"/imaging/import", "/imaging/status", "/imaging/reimport", "/imaging/delete"}
    body = {"project_id": str(PROJECT), "query_id": str(uuid.uuid4()), "dicom_to_nifti": True, "min_k": 10}
    async with _client(service, TRAINER_KEY) as client:
        for path in sorted(others):
            refused = await client.post(path, headers=TRAINER, json=body)
            assert refused.status_code == 401, path
            assert refused.json() == {"detail": "internal key missing or wrong", "code": "not_authenticated"}, path
    assert service.ledger.import_record(PROJECT) is not None  # /imaging/delete did nothing
    assert service.importer.store.studies(PROJECT)


@pytest.mark.parametrize("configured", [TRAINER_KEY, None], ids=["wrong-key", "not-configured"])
async def test_a_wrong_or_unconfigured_trainer_key_is_refused(service: ImagingService, configured: str | None) -> None:
    presented = TRAINER_KEY[:-1] + "x" if configured else TRAINER_KEY
    async with _client(service, configured) as client:
        for path in (LISTING, FILE):
            for headers in ({TRAINER_KEY_HEADER: presented}, {TRAINER_KEY_HEADER: ""}, {}):
                refused = await client.get(path, headers=headers)
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
    assert ImagingSettings().trainer_secret(kit) is None
    monkeypatch.setenv("FLIP_TRAINER_KEY", " ")
    assert ImagingSettings().trainer_secret(kit) is None
    monkeypatch.setenv("FLIP_TRAINER_KEY", TRAINER_KEY)
    settings = ImagingSettings()
    assert TRAINER_KEY not in repr(settings)
    assert settings.trainer_secret(kit) == TRAINER_KEY
    monkeypatch.setenv("FLIP_TRAINER_KEY", "too-short")
    with pytest.raises(ValueError, match="FLIP_TRAINER_KEY"):
        ImagingSettings()
    monkeypatch.setenv("FLIP_TRAINER_KEY", INTERNAL_KEY)
    with pytest.raises(ImagingConfigError, match="differ"):
        ImagingSettings().trainer_secret(kit)
