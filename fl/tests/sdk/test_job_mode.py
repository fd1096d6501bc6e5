"""The SDK inside a job, against a trust's real data-access-api and imaging-api with the trainer key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest

import flip
from flip.context import job_step
from flip_data_access.app import TRAINER_KEY_HEADER as DATA_ACCESS_HEADER
from flip_imaging.app import TRAINER_KEY_HEADER as IMAGING_HEADER

if TYPE_CHECKING:
    from conftest import Trust


def test_the_sdk_presents_the_header_both_services_check() -> None:
    from flip.trust_services import TRAINER_KEY_HEADER

    assert TRAINER_KEY_HEADER == DATA_ACCESS_HEADER == IMAGING_HEADER


def test_the_dataframe_is_the_frozen_cohort(trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trust.supernode_env(monkeypatch, tmp_path)
    with job_step(str(trust.project_id), "AAA", 2):
        assert flip.current() == flip.TrainerContext(
            str(trust.project_id), "AAA", 2, trust.data_access_url, trust.imaging_url
        )
        frame = flip.get_dataframe()
        picked = flip.get_dataframe(["accession_id", "person_id"])
    assert list(frame.columns) == ["person_id", "year_of_birth", "accession_id"]
    assert len(frame) == trust.persons
    assert sorted(frame["person_id"]) == list(range(1, trust.persons + 1))
    assert list(picked.columns) == ["accession_id", "person_id"]
    assert set(picked["accession_id"]) == {f"ACC{i}-CT" for i in range(1, trust.persons + 1)}


def test_an_unknown_column_is_the_services_refusal(
    trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trust.supernode_env(monkeypatch, tmp_path)
    with job_step(str(trust.project_id), "AAA", 1), pytest.raises(flip.TrainerDataError, match="nope"):
        flip.get_dataframe(["person_id", "nope"])


def test_images_are_downloaded_checked_and_cached(
    trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    trust.supernode_env(monkeypatch, cache)
    trust.imaging_requests.clear()
    with job_step(str(trust.project_id), "AAA", 1):
        (volume,) = flip.get_images(trust.accession)
        (mask,) = flip.get_images(trust.accession, "mask")
        assert volume == cache / str(trust.project_id) / trust.accession / "nifti" / "ct.nii.gz"
        assert volume.read_bytes() == trust.volume
        assert mask.read_bytes() == trust.mask
        loaded = np.asarray(nib.load(volume).dataobj)
        assert loaded.shape == (4, 5, 6)
        downloaded = [(path, status) for path, status in trust.imaging_requests if path.endswith(".nii.gz")]
        assert [status for _, status in downloaded] == [200, 200]

        trust.imaging_requests.clear()
        modified = volume.stat().st_mtime_ns
        assert flip.get_images(trust.accession) == [volume]
        assert volume.stat().st_mtime_ns == modified
        # One listing and one conditional request; the server answered 304, no bytes came again.
        assert [status for _, status in trust.imaging_requests] == [200, 304]


def test_a_damaged_cached_file_is_fetched_again(trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trust.supernode_env(monkeypatch, tmp_path)
    with job_step(str(trust.project_id), "AAA", 1):
        (volume,) = flip.get_images(trust.accession)
        volume.write_bytes(b"truncated")
        trust.imaging_requests.clear()
        assert flip.get_images(trust.accession) == [volume]
    assert hashlib.sha256(volume.read_bytes()).digest() == hashlib.sha256(trust.volume).digest()
    assert [status for _, status in trust.imaging_requests] == [200, 200]


def test_a_study_that_is_not_there_is_a_clear_error(
    trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trust.supernode_env(monkeypatch, tmp_path)
    expected = r"'ACC4-CT' is not available .*not imported.* 404"
    with job_step(str(trust.project_id), "AAA", 1), pytest.raises(flip.TrainerDataError, match=expected):
        flip.get_images("ACC4-CT")


def test_a_kind_the_study_does_not_have_is_an_empty_list(
    trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trust.supernode_env(monkeypatch, tmp_path)
    with job_step(str(trust.project_id), "AAA", 1):
        assert flip.get_images(trust.accession, "dicom") == []


@pytest.mark.parametrize("call", ["dataframe", "images"])
def test_a_wrong_trainer_key_is_refused_with_401(
    trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, call: str
) -> None:
    trust.supernode_env(monkeypatch, tmp_path, key=trust.trainer_key[:-1] + "x")
    with job_step(str(trust.project_id), "AAA", 1), pytest.raises(flip.TrainerDataError, match="401"):
        flip.get_dataframe() if call == "dataframe" else flip.get_images(trust.accession)


@pytest.mark.parametrize(
    ("project", "environ", "missing"),
    [
        ("p", {"FLIP_DATA_ACCESS_URL": "http://127.0.0.1:9"}, "FLIP_TRAINER_KEY is not set"),
        ("p", {"FLIP_TRAINER_KEY": "k" * 20}, "FLIP_DATA_ACCESS_URL is not set"),
        ("", {"FLIP_TRAINER_KEY": "k" * 20, "FLIP_DATA_ACCESS_URL": "http://127.0.0.1:9"}, "no project"),
    ],
)
def test_a_trust_without_a_trainer_key_or_url_says_so(project: str, environ: dict[str, str], missing: str) -> None:
    with job_step(project, "AAA", 1, environ=environ), pytest.raises(flip.TrainerDataError, match=missing):
        flip.get_dataframe()


def test_a_trust_without_an_imaging_url_says_so() -> None:
    environ = {"FLIP_TRAINER_KEY": "k" * 20}
    with job_step("p", "AAA", 1, environ=environ), pytest.raises(flip.TrainerDataError, match="FLIP_IMAGING_URL"):
        flip.get_images("ACC1")


def test_an_unreachable_service_is_a_trainer_data_error(tmp_path: Path) -> None:
    environ = {"FLIP_TRAINER_KEY": "k" * 20, "FLIP_DATA_ACCESS_URL": "http://127.0.0.1:9"}
    with job_step("p", "AAA", 1, environ=environ), pytest.raises(flip.TrainerDataError, match="cannot reach"):
        flip.get_dataframe()


def test_a_job_wins_over_local_dev_mode(trust: Trust, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    csv = tmp_path / "cohort.csv"
    csv.write_text("person_id\n1\n")
    flip.local_dev(csv)
    trust.supernode_env(monkeypatch, tmp_path)
    with job_step(str(trust.project_id), "AAA", 1):
        assert len(flip.get_dataframe()) == trust.persons
        # At the trust the researcher's CSV is not there: local_dev is ignored rather than failing.
        assert flip.local_dev(tmp_path / "not-uploaded.csv").trust == "AAA"
    assert len(flip.get_dataframe()) == 1
