"""The imaging-api over HTTP: imports of an approved project's studies, gated status, re-import, deletion,
and the images served to this trust's trainers.

Real throughout: synthetic OMOP data in an embedded PostgreSQL, the data-access-api's service (frozen
cohort, disclosure gate) called over ASGI, the embedded PACS over DICOM networking, dcm2niix.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from imaging_service_testing import (
    INTERNAL_KEY,
    STUDIES,
    ImagingWorld,
    approve,
    data_access,
    imaging_service,
    imaging_world,
)

from flip_core.contract import INTERNAL_KEY_HEADER
from flip_core.imaging import ImagingStatus, StudyFailure, StudyState
from flip_data_access.service import CohortService
from flip_imaging.app import DISCLOSURE, create_app
from flip_imaging.pacs import PacsClient
from flip_imaging.service import ImagingService
from flip_imaging.studies import StudyLedger

pytestmark = pytest.mark.slow

KEY = {INTERNAL_KEY_HEADER: INTERNAL_KEY}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImagingWorld]:
    with imaging_world(tmp_path_factory.mktemp("imaging-world")) as built:
        yield built


@pytest.fixture
async def cohorts(world: ImagingWorld, tmp_path: Path) -> AsyncIterator[CohortService]:
    async with data_access(world, tmp_path / "data-access") as service:
        yield service


class Api:
    """The imaging-api app in process, with its service started and stopped as uvicorn would."""

    def __init__(self, service: ImagingService) -> None:
        self.service = service
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service, INTERNAL_KEY)), base_url="http://imaging", headers=KEY
        )

    async def status(self, project: uuid.UUID) -> ImagingStatus:
        response = await self.http.post("/imaging/status", json={"project_id": str(project), "min_k": 10})
        assert response.status_code == 200, response.text
        return ImagingStatus.model_validate(response.json())

    async def until_complete(self, project: uuid.UUID, timeout_s: float = 60) -> ImagingStatus:
        async with asyncio.timeout(timeout_s):
            while not (status := await self.status(project)).complete:  # noqa: ASYNC110 - polling the API is the point
                await asyncio.sleep(0.1)
        return status


@pytest.fixture
async def api(world: ImagingWorld, cohorts: CohortService, tmp_path: Path) -> AsyncIterator[Api]:
    service = imaging_service(world, tmp_path / "imaging", cohorts)
    await service.start()
    client = Api(service)
    try:
        yield client
    finally:
        await client.http.aclose()
        await service.stop()


def _import_body(project: uuid.UUID, *, nifti: bool = True) -> dict[str, object]:
    return {"project_id": str(project), "query_id": str(uuid.uuid4()), "dicom_to_nifti": nifti, "min_k": 10}


async def test_an_approved_project_imports_and_its_images_are_served_by_accession(
    api: Api, cohorts: CohortService, world: ImagingWorld
) -> None:
    project = uuid.uuid4()
    await approve(cohorts, project)
    started = await api.http.post("/imaging/import", json=_import_body(project))
    assert started.status_code == 200, started.text
    assert ImagingStatus.model_validate(started.json()).k == 10

    status = await api.until_complete(project)
    persons = world.persons
    assert status.studies.value == persons  # noise is off here: the gate's count is the true one
    assert status.by_state[StudyState.READY].value == persons
    assert status.by_state[StudyState.FAILED].suppressed  # zero, and shown as suppressed like 1..k-1
    assert status.failures == []

    accession = world.accessions[0]
    base = f"/imaging/projects/{project}/studies/{accession}"
    nifti = (await api.http.get(f"{base}/nifti")).json()
    names = [f["name"] for f in nifti["files"]]
    assert any(n.endswith(".nii.gz") for n in names)
    assert any(n.endswith(".json") for n in names)
    volume = next(f for f in nifti["files"] if f["name"].endswith(".nii.gz"))
    got = await api.http.get(f"{base}/nifti/{volume['name']}")
    assert got.status_code == 200
    assert got.headers["etag"] == f'"{volume["sha256"]}"'
    assert len(got.content) == volume["bytes"]
    again = await api.http.get(f"{base}/nifti/{volume['name']}", headers={"If-None-Match": got.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""

    (mask,) = (await api.http.get(f"{base}/mask")).json()["files"]
    assert mask["name"] == "mask.nii.gz"
    dicom = (await api.http.get(f"{base}/dicom")).json()["files"]
    assert len(dicom) == world.studies[0].n_instances
    first = await api.http.get(f"{base}/dicom/{dicom[0]['name']}")
    assert first.headers["content-type"] == "application/dicom"
    assert accession.encode() not in first.content  # de-identified: the accession number is a pseudonym


BAD_IMAGE_REQUESTS = [
    ("/imaging/projects/{p}/studies/WILD*/nifti", 422, "invalid_accession"),
    ("/imaging/projects/{p}/studies/{a}/nifti/..%2F..%2Fmanifest.json", 422, "invalid_name"),
    ("/imaging/projects/{p}/studies/{a}/dicom/../../../manifest.json", 404, "not_found"),
    ("/imaging/projects/{p}/studies/{a}/nifti/manifest.json", 404, "not_found"),
    ("/imaging/projects/{p}/studies/{a}/secrets", 422, "validation_error"),
    ("/imaging/projects/{p}/studies/NOT-IN-COHORT/nifti", 404, "not_found"),
    ("/imaging/projects/{other}/studies/{a}/nifti", 404, "not_imported"),
    ("/imaging/projects/not-a-uuid/studies/{a}/nifti", 422, "validation_error"),
]


async def test_bad_image_requests_get_clear_errors(api: Api, cohorts: CohortService, world: ImagingWorld) -> None:
    project = uuid.uuid4()
    await approve(cohorts, project)
    await api.http.post("/imaging/import", json=_import_body(project, nifti=False))
    await api.until_complete(project)
    for path, status, code in BAD_IMAGE_REQUESTS:
        url = path.format(p=project, a=world.accessions[0], other=uuid.uuid4())
        response = await api.http.get(url)
        assert (response.status_code, response.json()["code"]) == (status, code), (url, response.text)


async def test_every_route_needs_the_internal_key_and_declares_what_it_discloses(api: Api) -> None:
    project = str(uuid.uuid4())
    bare = httpx.AsyncClient(transport=api.http._transport, base_url="http://imaging")
    async with bare:
        for method, url, body in [
            ("POST", "/imaging/import", _import_body(uuid.UUID(project))),
            ("POST", "/imaging/status", {"project_id": project}),
            ("POST", "/imaging/reimport", {"project_id": project}),
            ("POST", "/imaging/delete", {"project_id": project}),
            ("GET", f"/imaging/projects/{project}/studies/A1/nifti", None),
            ("GET", f"/imaging/projects/{project}/studies/A1/nifti/x.nii.gz", None),
        ]:
            response = await bare.request(method, url, json=body, headers={INTERNAL_KEY_HEADER: "wrong"})
            assert (response.status_code, response.json()["code"]) == (401, "not_authenticated"), url
        assert (await bare.get("/health")).status_code == 200
    schema = create_app(api.service, INTERNAL_KEY).openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get(DISCLOSURE) in {"gated", "row-level", "none"}, (method, path)


async def test_an_unapproved_project_is_refused_and_nothing_is_queued(api: Api) -> None:
    project = uuid.uuid4()
    response = await api.http.post("/imaging/import", json=_import_body(project))
    assert (response.status_code, response.json()["code"]) == (404, "not_approved")
    status = await api.http.post("/imaging/status", json={"project_id": str(project)})
    assert (status.status_code, status.json()["code"]) == (404, "not_imported")


async def test_a_study_gone_from_the_pacs_fails_with_a_reason_and_reimport_brings_it_back(
    world: ImagingWorld, cohorts: CohortService, tmp_path: Path
) -> None:
    gone = world.studies[1]
    removed = world.pacs.delete_study(gone.study_uid)
    assert removed == gone.n_instances
    service = imaging_service(world, tmp_path / "imaging", cohorts)
    await service.start()
    api = Api(service)
    try:
        project = uuid.uuid4()
        await approve(cohorts, project)
        await api.http.post("/imaging/import", json=_import_body(project, nifti=False))
        await api.until_complete(project)
        assert service.ledger.get(project, gone.accession).reason is StudyFailure.NOT_FOUND
        # One failed study is one person: below k, so the hub is told nothing about it.
        status = await api.status(project)
        assert status.by_state[StudyState.FAILED].suppressed
        assert status.failures == []
        missing = await api.http.get(f"/imaging/projects/{project}/studies/{gone.accession}/dicom")
        assert (missing.status_code, missing.json()["code"]) == (409, "study_not_ready")

        world.pacs_client().store_folder(world.labels / gone.accession)
        again = await api.http.post("/imaging/reimport", json={"project_id": str(project)})
        assert again.status_code == 200
        assert (await api.until_complete(project)).by_state[StudyState.FAILED].suppressed
        assert service.ledger.get(project, gone.accession).state is StudyState.READY
    finally:
        world.pacs_client().store_folder(world.labels / gone.accession)
        await api.http.aclose()
        await service.stop()


async def test_a_pacs_that_is_down_fails_every_study_with_a_reported_reason(
    world: ImagingWorld, cohorts: CohortService, tmp_path: Path
) -> None:
    dead = PacsClient("127.0.0.1", 9, "NOBODY", calling_ae_title="FLIPTRUST")  # discard port: refused
    service = imaging_service(world, tmp_path / "imaging", cohorts, pacs=dead)
    await service.start()
    api = Api(service)
    try:
        project = uuid.uuid4()
        await approve(cohorts, project)
        await api.http.post("/imaging/import", json=_import_body(project, nifti=False))
        status = await api.until_complete(project)
        assert status.by_state[StudyState.READY].suppressed
        assert [(f.reason, f.count.value) for f in status.failures] == [
            (StudyFailure.PACS_UNAVAILABLE, status.studies.value)
        ]
    finally:
        await api.http.aclose()
        await service.stop()


async def test_deleting_removes_every_image_and_the_status_says_deleted(
    api: Api, cohorts: CohortService, world: ImagingWorld
) -> None:
    project = uuid.uuid4()
    await approve(cohorts, project)
    await api.http.post("/imaging/import", json=_import_body(project, nifti=False))
    await asyncio.sleep(0.3)  # some studies in flight: deletion waits for them
    deleted = await api.http.post("/imaging/delete", json={"project_id": str(project)})
    assert deleted.status_code == 200
    assert ImagingStatus.model_validate(deleted.json()).deleted
    assert api.service.importer.store.studies(project) == []
    assert not api.service.running(project)
    gone = await api.http.get(f"/imaging/projects/{project}/studies/{world.accessions[0]}/dicom")
    assert gone.status_code == 404
    assert (await api.status(project)).deleted
    assert (await api.http.post("/imaging/delete", json={"project_id": str(project)})).status_code == 200
    # Importing again after a deletion starts afresh.
    await api.http.post("/imaging/import", json=_import_body(project, nifti=False))
    assert (await api.until_complete(project)).by_state[StudyState.READY].value is not None


async def test_an_import_interrupted_by_a_crash_resumes_and_completes(
    world: ImagingWorld, cohorts: CohortService, tmp_path: Path
) -> None:
    project = uuid.uuid4()
    await approve(cohorts, project)
    # What a process killed mid-import leaves on disk: studies queued, two taken, one of them converting.
    crashed = StudyLedger(tmp_path / "imaging" / "studies.sqlite3")
    crashed.open_import(project, to_nifti=True)
    crashed.enqueue(project, world.accessions)
    taken = crashed.claim(project, 2)
    crashed.advance(project, taken[0].accession, StudyState.CONVERTING)
    crashed.close()

    service = imaging_service(world, tmp_path / "imaging", cohorts)
    await service.start()
    api = Api(service)
    try:
        status = await api.until_complete(project)
        assert service.ledger.counts(project)[StudyState.READY] == STUDIES
        assert status.by_state[StudyState.READY].value == world.persons
        assert service.ledger.get(project, taken[0].accession).attempts == 2  # retried, not failed
    finally:
        await api.http.aclose()
        await service.stop()


async def test_a_study_without_pixel_data_fails_as_corrupt_and_the_others_import(
    world: ImagingWorld, cohorts: CohortService, tmp_path: Path
) -> None:
    broken = world.studies[2]
    world.pacs.delete_study(broken.study_uid)
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for path in broken.instance_paths():
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(stripped / path.name, enforce_file_format=True)
    world.pacs_client().store_folder(stripped)
    service = imaging_service(world, tmp_path / "imaging", cohorts)
    await service.start()
    api = Api(service)
    try:
        project = uuid.uuid4()
        await approve(cohorts, project)
        await api.http.post("/imaging/import", json=_import_body(project, nifti=True))
        await api.until_complete(project)
        assert service.ledger.get(project, broken.accession).reason is StudyFailure.CORRUPT
        assert service.ledger.counts(project)[StudyState.READY] == STUDIES - 1
    finally:
        world.pacs.delete_study(broken.study_uid)
        world.pacs_client().store_folder(broken.folder)
        await api.http.aclose()
        await service.stop()
