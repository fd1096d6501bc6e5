"""A project's import end to end on the embedded PACS: synthetic studies in, de-identified studies and
NIfTI volumes out, bad accessions failing with a reason while the others proceed, and no PHI stored."""

from __future__ import annotations

import itertools
import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage, XRayRadiationDoseSRStorage, generate_uid

from flip_core.imaging import StudyFailure, StudyState
from flip_imaging.deid import Deidentifier
from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.importer import StageTimes, StudyImporter
from flip_imaging.pacs import DEFAULT_STORAGE_SOP_CLASSES, PacsClient
from flip_imaging.store import ImageStore
from flip_imaging.studies import StudyLedger
from flip_imaging.synthetic import write_studies
from flip_imaging.synthetic_phi import phi_values
from flip_omop import get_profile, image_occurrences

PROFILE, PERSONS, SEED, STUDIES = "north", 200, 5, 4
PROJECT = uuid.UUID("00000000-0000-4000-8000-00000000beef")


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[EmbeddedPacs, PacsClient]]:
    with EmbeddedPacs(tmp_path / "pacs", ae_title="TESTPACS") as server:
        client = PacsClient(server.host, server.port, "TESTPACS", calling_ae_title="FLIPTRUST")
        written = write_studies(get_profile(PROFILE), PERSONS, SEED, tmp_path / "synthetic", limit=STUDIES)
        assert len(written) == STUDIES
        assert client.store_folder(tmp_path / "synthetic") == sum(s.n_instances for s in written)
        yield server, client


def _importer(tmp_path: Path, client: PacsClient, *, labels: Path | None = None) -> StudyImporter:
    return StudyImporter(
        ledger=StudyLedger(tmp_path / "state" / "studies.sqlite3"),
        store=ImageStore(tmp_path / "state" / "images"),
        pacs=client,
        deid=Deidentifier(b"trust-secret-for-tests-0123456789"),
        parallel=2,
        labels=labels,
    )


async def test_a_project_imports_with_nifti_and_bad_accessions_fail_alone(
    pacs: tuple[EmbeddedPacs, PacsClient], tmp_path: Path
) -> None:
    _, client = pacs
    studies = list(itertools.islice(image_occurrences(get_profile(PROFILE), PERSONS, SEED), STUDIES))
    accessions = [s.accession_id for s in studies]
    importer = _importer(tmp_path, client, labels=tmp_path / "synthetic")
    await importer.run(PROJECT, [*accessions, "NOT-IN-PACS", "WILD*", accessions[0]], to_nifti=True)

    counts = importer.ledger.counts(PROJECT)
    assert counts[StudyState.READY] == STUDIES
    assert counts[StudyState.FAILED] == 2
    assert importer.ledger.failures(PROJECT) == {StudyFailure.NOT_FOUND: 1, StudyFailure.INVALID_ACCESSION: 1}
    stored = importer.store.studies(PROJECT)
    assert sorted(stored) == sorted(importer.study_key(a) for a in accessions)
    for key in stored:
        importer.store.verify(PROJECT, key)
        assert importer.store.files(PROJECT, key, "dicom")
        assert [p.suffix for p in importer.store.files(PROJECT, key, "nifti")].count(".gz") == 1
    for accession in accessions:  # each study's label came along, voxel for voxel
        (mask,) = importer.store.files(PROJECT, importer.study_key(accession), "mask")
        load: Any = nib.load  # nibabel's return type is too general for mypy
        source = np.asanyarray(load(tmp_path / "synthetic" / accession / "mask.nii.gz").dataobj)
        copied = load(mask)
        assert copied.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(copied.dataobj), source)
        assert copied.header["descrip"].tobytes().strip(b"\0") == b""

    # No identifying value of any study, nor any accession id, is stored anywhere: names, bytes, paths.
    secrets = set().union(*(phi_values(s) for s in studies)) | set(accessions)
    images = tmp_path / "state" / "images"
    for path in images.rglob("*"):
        for secret in secrets:
            assert secret not in str(path.relative_to(images))
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), (secret, path.name)
    assert not list(images.glob(".staging-*"))


async def test_a_pacs_that_is_down_fails_studies_with_a_reason_and_reimport_recovers(
    pacs: tuple[EmbeddedPacs, PacsClient], tmp_path: Path
) -> None:
    server, client = pacs
    accession = next(iter(image_occurrences(get_profile(PROFILE), PERSONS, SEED))).accession_id
    importer = _importer(tmp_path, client)
    down = PacsClient(server.host, 1, "TESTPACS", calling_ae_title="FLIPTRUST")
    importer.pacs = down
    await importer.run(PROJECT, [accession], to_nifti=False)
    assert importer.ledger.failures(PROJECT) == {StudyFailure.PACS_UNAVAILABLE: 1}
    importer.pacs = client
    assert importer.ledger.reimport(PROJECT) == 1
    await importer.run(PROJECT, [], to_nifti=False)
    assert importer.ledger.get(PROJECT, accession).state is StudyState.READY
    assert importer.ledger.get(PROJECT, accession).attempts == 2
    key = importer.study_key(accession)
    assert importer.store.files(PROJECT, key, "nifti") == []  # the project did not ask for NIfTI


async def test_a_broken_label_fails_its_study_as_corrupt_and_others_proceed(
    pacs: tuple[EmbeddedPacs, PacsClient], tmp_path: Path
) -> None:
    _, client = pacs
    studies = list(itertools.islice(image_occurrences(get_profile(PROFILE), PERSONS, SEED), STUDIES))
    accessions = [s.accession_id for s in studies]
    (tmp_path / "synthetic" / accessions[0] / "mask.nii.gz").write_bytes(b"not a nifti file")
    (tmp_path / "synthetic" / accessions[1] / "mask.nii.gz").unlink()  # no label: imported without one
    importer = _importer(tmp_path, client, labels=tmp_path / "synthetic")
    await importer.run(PROJECT, accessions, to_nifti=False)

    assert importer.ledger.get(PROJECT, accessions[0]).reason is StudyFailure.CORRUPT
    assert importer.ledger.counts(PROJECT)[StudyState.READY] == STUDIES - 1
    assert importer.store.files(PROJECT, importer.study_key(accessions[1]), "mask") == []
    assert importer.store.files(PROJECT, importer.study_key(accessions[2]), "mask")


async def test_retrieving_in_worker_processes_gives_the_same_study_and_stages_are_timed(
    pacs: tuple[EmbeddedPacs, PacsClient], tmp_path: Path
) -> None:
    _, client = pacs
    accession = next(iter(image_occurrences(get_profile(PROFILE), PERSONS, SEED))).accession_id
    inline = _importer(tmp_path / "inline", client)
    await inline.run(PROJECT, [accession], to_nifti=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        pooled = _importer(tmp_path / "pooled", client)
        pooled.deid_pool, pooled.stage_times = pool, StageTimes()
        await pooled.run(PROJECT, [accession], to_nifti=True)

    key = inline.study_key(accession)
    assert pooled.ledger.get(PROJECT, accession).state is StudyState.READY
    assert pooled.store.verify(PROJECT, key) == inline.store.verify(PROJECT, key)  # same files, same bytes
    assert set(pooled.stage_times.seconds) == {"find", "retrieve", "deid", "convert", "store"}
    assert all(seconds >= 0 for seconds in pooled.stage_times.seconds.values())


async def test_an_instance_that_must_not_leave_fails_its_study_as_corrupt(
    pacs: tuple[EmbeddedPacs, PacsClient], tmp_path: Path
) -> None:
    _, client = pacs
    extra = write_studies(get_profile(PROFILE), PERSONS, SEED, tmp_path / "extra", limit=STUDIES + 1)[-1]
    burned = extra.instance_paths()[len(extra.instance_paths()) // 2]
    ds = pydicom.dcmread(burned)
    ds.BurnedInAnnotation = "YES"  # text in the pixels: the basic profile cannot clean it
    ds.save_as(burned, enforce_file_format=True)
    client.store_folder(extra.folder)
    importer = _importer(tmp_path, client)
    await importer.run(PROJECT, [extra.accession], to_nifti=False)

    assert importer.ledger.get(PROJECT, extra.accession).reason is StudyFailure.CORRUPT
    assert importer.store.studies(PROJECT) == []
    assert not list((tmp_path / "state" / "images").glob(".staging-*"))


def _companion(template: Path, folder: Path, sop_class: str, *, pixels: bool) -> None:
    """Store-ready copy of one instance of a study as a new series of another SOP class (same study)."""
    ds = pydicom.dcmread(template)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if not pixels:
        del ds.PixelData
        ds.Modality = "SR"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


async def test_a_dose_report_in_a_study_is_left_out_and_the_images_import(
    pacs: tuple[EmbeddedPacs, PacsClient], tmp_path: Path
) -> None:
    _, client = pacs
    study = write_studies(get_profile(PROFILE), PERSONS, SEED, tmp_path / "again", limit=1)[0]
    _companion(study.instance_paths()[0], tmp_path / "report", XRayRadiationDoseSRStorage, pixels=False)
    assert client.store_folder(tmp_path / "report") == 1
    importer = _importer(tmp_path, client)
    await importer.run(PROJECT, [study.accession], to_nifti=True)

    assert importer.ledger.get(PROJECT, study.accession).state is StudyState.READY
    stored = importer.store.files(PROJECT, importer.study_key(study.accession), "dicom")
    assert len(stored) == study.n_instances  # the images, and nothing of the report
    assert all(pydicom.dcmread(p).SOPClassUID != XRayRadiationDoseSRStorage for p in stored)


async def test_a_partial_retrieve_fails_its_study_instead_of_importing_what_arrived(
    pacs: tuple[EmbeddedPacs, PacsClient], tmp_path: Path
) -> None:
    server, _ = pacs
    study = write_studies(get_profile(PROFILE), PERSONS, SEED, tmp_path / "again", limit=1)[0]
    other = write_studies(get_profile(PROFILE), PERSONS, SEED, tmp_path / "again", limit=2)[1]
    _companion(study.instance_paths()[0], tmp_path / "capture", SecondaryCaptureImageStorage, pixels=True)
    full = PacsClient(server.host, server.port, "TESTPACS", calling_ae_title="FLIPTRUST")
    assert full.store_folder(tmp_path / "capture") == 1
    # A client that cannot take Secondary Capture: the PACS fails that one sub-operation (final status 0xB000)
    # and sends the rest, which must not become a READY study with an image missing.
    narrow = PacsClient(
        server.host,
        server.port,
        "TESTPACS",
        calling_ae_title="FLIPTRUST",
        storage_sop_classes=[c for c in DEFAULT_STORAGE_SOP_CLASSES if c != SecondaryCaptureImageStorage],
    )
    importer = _importer(tmp_path, narrow)
    await importer.run(PROJECT, [study.accession, other.accession], to_nifti=False)

    assert importer.ledger.get(PROJECT, study.accession).reason is StudyFailure.RETRIEVE_FAILED
    assert importer.ledger.get(PROJECT, other.accession).state is StudyState.READY
    assert importer.store.studies(PROJECT) == [importer.study_key(other.accession)]
    importer.pacs = full  # with every class on offer, a re-import brings the whole study
    assert importer.ledger.reimport(PROJECT) == 1
    await importer.run(PROJECT, [], to_nifti=False)
    assert importer.ledger.get(PROJECT, study.accession).state is StudyState.READY
    stored = importer.store.files(PROJECT, importer.study_key(study.accession), "dicom")
    assert len(stored) == study.n_instances + 1
