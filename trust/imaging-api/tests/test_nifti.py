"""NIfTI conversion with the real dcm2niix: shape, spacing, scrubbed sidecar, checksums, and every failure mode."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from deid_testing import SECRET, BuiltSeries, build_series, write_series

from flip_imaging.deid import Deidentifier
from flip_imaging.nifti import SIDECAR_KEYS, ConversionError, convert_to_nifti


def _deidentified(series: BuiltSeries, tmp_path: Path, folder: str = "series") -> Path:
    write_series(series, tmp_path / f"raw_{folder}")
    out = tmp_path / folder
    deid = Deidentifier(SECRET)
    for path in series.paths:
        deid.file(path, out)
    return out


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_converts_a_series_to_one_3d_volume(tmp_path: Path, modality: str) -> None:
    series = build_series(modality, slices=5, rows=12, cols=18)  # type: ignore[arg-type]
    dicom_dir = _deidentified(series, tmp_path)
    out = tmp_path / "nifti"

    result = convert_to_nifti(dicom_dir, out, timeout_s=30, name="R0123456789ABCDE")

    assert result.shape == series.shape == (18, 12, 5)
    assert result.spacing == pytest.approx(series.spacing, abs=1e-4)
    assert result.nifti.path == out / "R0123456789ABCDE.nii.gz"
    assert result.sidecar.path == out / "R0123456789ABCDE.json"
    # Only the two files: the staging folder is gone.
    assert sorted(p.name for p in out.iterdir()) == ["R0123456789ABCDE.json", "R0123456789ABCDE.nii.gz"]
    for written in result.files:
        assert written.sha256 == hashlib.sha256(written.path.read_bytes()).hexdigest()
        assert written.size == written.path.stat().st_size
    image = nib.load(result.nifti.path)
    data = np.asanyarray(image.dataobj)  # type: ignore[attr-defined]
    assert data.shape == series.shape
    assert np.isfinite(data).all()
    # The bright blob survives conversion (intensities not mangled).
    assert data.max() > data.min()


def test_sidecar_is_scrubbed_to_the_allowlist(tmp_path: Path) -> None:
    dicom_dir = _deidentified(build_series("MR", slices=3), tmp_path)
    result = convert_to_nifti(dicom_dir, tmp_path / "nifti", timeout_s=30)
    sidecar = json.loads(result.sidecar.path.read_text())
    assert set(sidecar) <= SIDECAR_KEYS
    # dcm2niix writes these from the header; none may reach the store.
    for key in ("AcquisitionTime", "ProtocolName", "SeriesDescription", "InstitutionName", "StationName"):
        assert key not in sidecar
    assert sidecar["Modality"] == "MR"
    assert sidecar["EchoTime"] == pytest.approx(0.0046)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"no DICOM|no NIfTI"):
        convert_to_nifti(tmp_path / "empty", tmp_path / "out", timeout_s=30)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        convert_to_nifti(tmp_path / "nope", tmp_path / "out", timeout_s=30)


def test_garbage_files_and_no_paths_in_the_message(tmp_path: Path) -> None:
    folder = tmp_path / "garbage"
    folder.mkdir()
    for i in range(3):
        (folder / f"file{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(200))
    with pytest.raises(ConversionError) as excinfo:
        convert_to_nifti(folder, tmp_path / "out", timeout_s=30)
    assert str(tmp_path) not in str(excinfo.value)
    assert not list((tmp_path / "out").iterdir())


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    for n, modality in ((1, "CT"), (2, "MR")):
        _deidentified(build_series(modality, series_no=n, slices=3), tmp_path, folder="mixed")  # type: ignore[arg-type]
    assert len(list(folder.iterdir())) == 6
    with pytest.raises(ConversionError, match="2 volumes"):
        convert_to_nifti(folder, tmp_path / "out", timeout_s=30)


def test_timeout_kills_dcm2niix(tmp_path: Path) -> None:
    # A stand-in that hangs: dcm2niix itself is too fast on test data to time out reliably.
    hanging = tmp_path / "dcm2niix-hangs"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(hanging.stat().st_mode | stat.S_IXUSR)
    dicom_dir = _deidentified(build_series("CT", slices=2), tmp_path)
    started = time.monotonic()
    with pytest.raises(ConversionError, match=r"timed out after 0\.5 s"):
        convert_to_nifti(dicom_dir, tmp_path / "out", timeout_s=0.5, dcm2niix=str(hanging))
    assert time.monotonic() - started < 5


def test_missing_dcm2niix(tmp_path: Path) -> None:
    dicom_dir = _deidentified(build_series("CT", slices=2), tmp_path)
    with pytest.raises(ConversionError, match="not found"):
        convert_to_nifti(dicom_dir, tmp_path / "out", timeout_s=30, dcm2niix="dcm2niix-not-installed")


def test_failing_dcm2niix_reports_exit_code(tmp_path: Path) -> None:
    failing = tmp_path / "dcm2niix-fails"
    failing.write_text(f"#!/bin/sh\necho 'Error: cannot read {tmp_path}/series/secret-file.dcm' >&2\nexit 4\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    dicom_dir = _deidentified(build_series("CT", slices=2), tmp_path)
    with pytest.raises(ConversionError, match=r"exit 4 \(corrupt DICOM file\)") as excinfo:
        convert_to_nifti(dicom_dir, tmp_path / "out", timeout_s=30, dcm2niix=str(failing))
    assert str(tmp_path) not in str(excinfo.value)
    assert "secret-file" not in str(excinfo.value)


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_volume_is_refused(tmp_path: Path, damage: str) -> None:
    dicom_dir = _deidentified(build_series("CT", slices=4, rows=32, cols=32), tmp_path)
    good = convert_to_nifti(dicom_dir, tmp_path / "good", timeout_s=30, name="good").nifti.path.read_bytes()
    bad = bytearray(good[:-20] if damage == "truncated" else good)
    if damage == "corrupted":
        bad[len(bad) // 2] ^= 0xFF  # inside the deflate stream: the gzip CRC no longer matches
    (tmp_path / "bad.nii.gz").write_bytes(bytes(bad))
    # A stand-in that "converts" by writing the damaged volume where dcm2niix would.
    damaging = tmp_path / "dcm2niix-damages"
    damaging.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do case "$1" in -o) out="$2"; shift;; -f) name="$2"; shift;; esac; shift; done\n'
        f'cp "{tmp_path}/bad.nii.gz" "$out/$name.nii.gz" && echo "{{}}" > "$out/$name.json"\n'
    )
    damaging.chmod(damaging.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(ConversionError, match=r"truncated|unreadable"):
        convert_to_nifti(dicom_dir, tmp_path / "out", timeout_s=30, name="bad", dcm2niix=str(damaging))
    assert not list((tmp_path / "out").glob("bad.*"))


@pytest.mark.parametrize("name", ["%n_%i", "../escape", "", "a" * 65, "has space"])
def test_output_name_must_be_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConversionError, match="output name"):
        convert_to_nifti(tmp_path, tmp_path / "out", timeout_s=30, name=name)
