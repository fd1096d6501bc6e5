"""Local-dev mode: the same calls read a CSV file and an images folder, so code moves to a job unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

import flip

CSV = "person_id,accession_id,age\n1,ACC1,63\n2,ACC2,71\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    csv = tmp_path / "cohort.csv"
    csv.write_text(CSV)
    images = tmp_path / "images"
    for name in ("b.nii.gz", "a.nii.gz", "a.json"):
        (images / "ACC1" / "nifti").mkdir(parents=True, exist_ok=True)
        (images / "ACC1" / "nifti" / name).write_bytes(name.encode())
    (images / "ACC1" / "dicom" / "1.2.3").mkdir(parents=True)
    (images / "ACC1" / "dicom" / "1.2.3" / "2.dcm").write_bytes(b"DICM")
    (images / "ACC1" / "dicom" / "0.dcm").write_bytes(b"DICM")
    return csv, images


def test_outside_a_job_and_local_dev_the_sdk_explains_itself() -> None:
    for call in (flip.get_dataframe, flip.current, lambda: flip.get_images("ACC1")):
        with pytest.raises(flip.NotInJob, match=r"flip\.local_dev"):
            call()
    with pytest.raises(flip.NotInJob):
        flip.log_metric("loss", 1.0)
    assert flip.logged_metrics() == []


def test_local_dev_reads_the_csv_and_the_images_folder(files: tuple[Path, Path]) -> None:
    csv, images = files
    context = flip.local_dev(csv, images, trust="DEV", project_id="p1")
    assert context == flip.TrainerContext("p1", "DEV", 0, None, None)
    assert flip.current() == context
    frame = flip.get_dataframe()
    assert list(frame.columns) == ["person_id", "accession_id", "age"]
    assert frame["age"].tolist() == [63, 71]
    assert list(flip.get_dataframe(["age", "person_id"]).columns) == ["age", "person_id"]
    nifti = images / "ACC1" / "nifti"
    assert flip.get_images("ACC1") == [nifti / "a.json", nifti / "a.nii.gz", nifti / "b.nii.gz"]
    dicom = images / "ACC1" / "dicom"
    assert flip.get_images("ACC1", "dicom") == [dicom / "0.dcm", dicom / "1.2.3" / "2.dcm"]


def test_the_environment_turns_local_dev_on(files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    csv, images = files
    monkeypatch.setenv("FLIP_DEV_DATAFRAME", str(csv))
    monkeypatch.setenv("FLIP_DEV_IMAGES", str(images))
    assert flip.current() == flip.TrainerContext("local", "LOCAL", 0, None, None)
    assert len(flip.get_dataframe()) == 2
    assert len(flip.get_images("ACC1")) == 3


def test_local_dev_errors(files: tuple[Path, Path], tmp_path: Path) -> None:
    csv, images = files
    with pytest.raises(flip.TrainerDataError, match="not a file"):
        flip.local_dev(tmp_path / "missing.csv")
    with pytest.raises(flip.TrainerDataError, match="not a folder"):
        flip.local_dev(csv, tmp_path / "missing")
    flip.local_dev(csv)
    with pytest.raises(flip.TrainerDataError, match=r"unknown column\(s\) 'weight'"):
        flip.get_dataframe(["age", "weight"])
    with pytest.raises(flip.TrainerDataError, match="no images folder"):
        flip.get_images("ACC1")
    flip.local_dev(csv, images)
    with pytest.raises(flip.TrainerDataError, match="'ACC2' has no nifti folder"):
        flip.get_images("ACC2")
    with pytest.raises(flip.TrainerDataError, match="has no mask folder"):
        flip.get_images("ACC1", "mask")
    with pytest.raises(flip.TrainerDataError, match="cannot name a folder"):
        flip.get_images("..")
    with pytest.raises(ValueError, match="kind must be one of"):
        flip.get_images("ACC1", "png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="columns"):
        flip.get_dataframe("age")  # type: ignore[arg-type]
