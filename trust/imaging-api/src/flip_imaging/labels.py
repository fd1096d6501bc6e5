"""Segmentation labels kept by the trust beside its PACS, attached to imported studies.

Masks are annotations, not PACS objects: a trust keeps them in a labels folder as
``<labels root>/<accession id>/mask.nii.gz`` (``flip trust imaging generate`` writes them there for the
synthetic studies).  On import a study's mask is copied into the research store as ``mask/mask.nii.gz``,
rebuilt from its voxels and affine only, so nothing else of the source file's header (description, intent
name, auxiliary file, extensions) is carried over, and the stored file never names the accession id.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from flip_imaging.store import UnsafePath, safe_segment

MASK_NAME = "mask.nii.gz"
MAX_LABEL = 255


class BadMask(ValueError):
    """The label file exists but is not a usable 3-D integer mask."""


def find_mask(labels_root: Path, accession: str) -> Path | None:
    """The accession's mask file under ``labels_root``, or None (an unsafe accession never has one)."""
    try:
        folder = safe_segment(accession)
    except UnsafePath:
        return None
    path = labels_root / folder / MASK_NAME
    return path if path.is_file() else None


def copy_mask(source: Path, target: Path) -> None:
    """Write a clean copy of the mask at ``source`` to ``target`` (uint8 voxels, affine, nothing else)."""
    loader: Any = nib.load  # nibabel is not annotated
    try:
        image = loader(source)
        voxels = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise BadMask("the mask is not a readable NIfTI file") from exc
    if voxels.ndim != 3 or voxels.size == 0:
        raise BadMask("a mask must be a 3-D volume")
    if not np.issubdtype(voxels.dtype, np.integer) and not np.array_equal(voxels, np.round(voxels)):
        raise BadMask("a mask must hold integer labels")
    if voxels.min() < 0 or voxels.max() > MAX_LABEL:
        raise BadMask(f"mask labels must be between 0 and {MAX_LABEL}")
    nifti_image: Any = nib.Nifti1Image
    clean = nifti_image(voxels.astype(np.uint8), affine)
    clean.header.set_xyzt_units("mm")
    clean.set_qform(affine, code=1)
    clean.set_sform(affine, code=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(clean.to_bytes(), compresslevel=6, mtime=0))
