"""The research image store: whole studies or none, checksums that catch damage, no way out of the store."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from flip_imaging.store import MANIFEST, DamagedStudy, ImageStore, StudyNotInStore, UnsafePath, safe_segment

PROJECT = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


def _stage(store: ImageStore, content: bytes = b"DICM") -> Path:
    staged = store.staging()
    (staged / "dicom").mkdir()
    (staged / "dicom" / "1.2.3.dcm").write_bytes(content)
    (staged / "nifti").mkdir()
    (staged / "nifti" / "series.nii.gz").write_bytes(b"nifti" + content)
    return staged


def test_a_committed_study_is_whole_listed_and_verified(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    manifest = store.commit(PROJECT, "STUDY1", _stage(store))
    assert set(manifest.files) == {"dicom/1.2.3.dcm", "nifti/series.nii.gz"}
    assert store.studies(PROJECT) == ["STUDY1"]
    assert store.verify(PROJECT, "STUDY1") == manifest
    assert [p.name for p in store.files(PROJECT, "STUDY1", "nifti")] == ["series.nii.gz"]
    assert store.file(PROJECT, "STUDY1", "dicom/1.2.3.dcm").read_bytes() == b"DICM"
    assert not list(store.root.glob(".staging-*"))


def test_reimport_replaces_the_study_in_one_move(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    store.commit(PROJECT, "S", _stage(store, b"first"))
    store.commit(PROJECT, "S", _stage(store, b"second"))
    assert store.file(PROJECT, "S", "dicom/1.2.3.dcm").read_bytes() == b"second"
    assert not list(store.root.glob(".staging-*"))


def test_checksums_taken_while_writing_are_used_and_the_rest_are_hashed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    staged = _stage(store)
    dicom, nifti = staged / "dicom" / "1.2.3.dcm", staged / "nifti" / "series.nii.gz"
    # A writer's checksum is believed while the size still matches; a stale one (size changed) is not.
    manifest = store.commit(PROJECT, "S", staged, checksums={dicom: (4, "a" * 64), nifti: (5, "b" * 64)})
    assert manifest.files["dicom/1.2.3.dcm"] == (4, "a" * 64)
    assert manifest.files["nifti/series.nii.gz"] == (9, hashlib.sha256(b"niftiDICM").hexdigest())
    # Verifying reads every file again, so a wrong checksum from a writer cannot hide.
    with pytest.raises(DamagedStudy):
        store.verify(PROJECT, "S")


def test_damage_is_detected_and_not_served(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    store.commit(PROJECT, "S", _stage(store))
    store.file(PROJECT, "S", "dicom/1.2.3.dcm").write_bytes(b"tampered")
    with pytest.raises(DamagedStudy):
        store.verify(PROJECT, "S")
    (store.study_dir(PROJECT, "S") / MANIFEST).write_text("{not json")
    with pytest.raises(DamagedStudy):
        store.manifest(PROJECT, "S")


@pytest.mark.parametrize(
    "bad", ["..", "../etc", "a/b", "a\\b", "", ".hidden", "a..b", "x" * 200, "name\x00", "é", " space"]
)
def test_unsafe_names_never_reach_the_file_system(tmp_path: Path, bad: str) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(UnsafePath):
        safe_segment(bad)
    with pytest.raises(UnsafePath):
        store.study_dir(PROJECT, bad)


def test_only_files_in_the_manifest_can_be_opened(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    store.commit(PROJECT, "S", _stage(store))
    (tmp_path / "images" / "secret.txt").write_text("outside")
    for relative in ("../../secret.txt", "dicom/../../../secret.txt", "/etc/passwd"):
        with pytest.raises((UnsafePath, StudyNotInStore)):
            store.file(PROJECT, "S", relative)
    with pytest.raises(StudyNotInStore):
        store.file(PROJECT, "S", "dicom/unlisted.dcm")
    with pytest.raises(UnsafePath):
        store.files(PROJECT, "S", "../")
    with pytest.raises(StudyNotInStore):
        store.manifest(PROJECT, "NOPE")


def test_half_prepared_studies_are_invisible_and_cleaned_at_start(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    leftover = _stage(store)  # the process dies before commit
    assert store.studies(PROJECT) == []
    ImageStore(tmp_path / "images")  # restarted
    assert not leftover.exists()


def test_an_empty_study_is_refused_and_deleting_a_project_removes_everything(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(DamagedStudy, match="no files"):
        store.commit(PROJECT, "EMPTY", store.staging())
    store.commit(PROJECT, "A", _stage(store))
    store.commit(PROJECT, "B", _stage(store))
    assert store.delete_project(PROJECT) == 2
    assert store.studies(PROJECT) == []
    assert store.delete_project(PROJECT) == 0
