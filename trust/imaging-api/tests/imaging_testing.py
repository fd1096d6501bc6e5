"""Helpers for the imaging tests: read a synthetic series back, and convert one with dcm2niix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset

from flip_imaging.synthetic import SyntheticStudy


def read_series(study: SyntheticStudy) -> tuple[list[FileDataset], np.ndarray]:
    """The instances of ``study`` in instance order and its volume ``[slice, row, column]`` in modality units."""
    instances = [pydicom.dcmread(path) for path in study.instance_paths()]
    volume = np.stack(
        [ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in instances]
    )
    return instances, volume


def dcm2niix(series_folder: Path, out: Path) -> list[Path]:
    """Run dcm2niix the way the imaging import will (gzip, BIDS sidecar, named by series UID); the files it wrote."""
    executable = shutil.which("dcm2niix")
    if executable is None:
        pytest.skip("dcm2niix is not installed (make system-deps installs it)")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [executable, "-z", "y", "-b", "y", "-f", "%j", "-o", str(out), str(series_folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return sorted(out.iterdir())
