"""Synthetic DICOM studies for a trust's PACS, matching the imaging studies in its OMOP data.

For every ``image_occurrence`` row of the synthetic dataset ``(profile, persons, seed)``
(:func:`flip_omop.image_occurrences`), :func:`write_studies` writes one small axial series as real
DICOM Part-10 files (Explicit VR Little Endian; CT or MR Image Storage) and the organ segmentation
as NIfTI::

    out_dir/<accession>/<series uid>/<instance number>.dcm   (24 slices of 64 × 64, int16)
    out_dir/<accession>/mask.nii.gz                          (uint8 organ label on dcm2niix's grid)

The small default keeps the demo and the tests fast.  ``sizes`` asks for bigger volumes per modality, e.g.
:data:`CLINICAL_SIZES` for benchmarks that must move what a hospital PACS really holds.

The files carry the study's accession id and UIDs, realistic patient and clinician PHI
(:func:`phi_values` lists it, for de-identification tests), the trust's scanner differences
(:func:`scanner_for`) and learnable content: a bright organ and, where OMOP records a lesion, a
brighter sphere of the recorded diameter inside it.  Everything is derived from the inputs, never
from the clock, so the same inputs always give byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from itertools import islice
from pathlib import Path
from typing import Any, Final

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from flip_imaging.synthetic_phantom import Grid, Phantom, VolumeSize, phantom_for, render, to_nifti_order
from flip_imaging.synthetic_phi import StudyPhi, phi_values, study_phi
from flip_imaging.synthetic_scanner import Scanner, scanner_for
from flip_omop import ImagingStudy, TrustProfile, image_occurrences
from flip_omop.concepts import Modality

__all__ = [
    "CLINICAL_SIZES",
    "MASK_FILE",
    "Grid",
    "Phantom",
    "Scanner",
    "StudyPhi",
    "SyntheticStudy",
    "VolumeSize",
    "phi_values",
    "scanner_for",
    "sop_instance_uid",
    "study_phi",
    "write_studies",
    "write_study",
]

MASK_FILE: Final = "mask.nii.gz"
CLINICAL_SIZES: Final[Mapping[Modality, VolumeSize]] = {
    "CT": VolumeSize(matrix=512, slices=160),
    "MR": VolumeSize(matrix=256, slices=48),
}
"""Volumes of the size a hospital PACS holds, for benchmarks (about 80 MB per CT and 6 MB per MR series).

CT is reconstructed on a 512 × 512 matrix almost everywhere; 160 slices lies between a routine 3-5 mm
reconstruction of a chest or abdomen (60-100 slices) and a thin 1 mm one (300 and more), and on the default
field of view gives 0.5 mm pixels and 0.75 mm slices.  MR series are smaller: 256 × 256 in-plane and a few
dozen slices for the 2-D axial sequences most studies consist of (here 2.5 mm slices)."""
_UID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_OID, "flip.synthetic-imaging")


def _derived_uid(*parts: str) -> UID:
    """A UUID-derived (2.25) UID that is a pure function of ``parts`` (≤ 44 characters, always valid).

    pydicom's ``generate_uid(None, ...)`` ignores its entropy sources and is random, hence our own.
    """
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}")


# Our own implementation UID (instead of pydicom's, which embeds its version) keeps the files
# byte-identical across pydicom upgrades.
IMPLEMENTATION_CLASS_UID: Final = _derived_uid("implementation class")
IMPLEMENTATION_VERSION: Final = "FLIP_SYNTH_1"
PRIVATE_CREATOR: Final = "FLIP SYNTHETIC PHI"
_SOP_CLASS: Final[dict[Modality, UID]] = {"CT": CTImageStorage, "MR": MRImageStorage}
# Accession ids become folder names: refuse anything that could leave out_dir.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SyntheticStudy:
    """One written study: where its files are and the ground truth they show."""

    accession: str
    study_uid: str
    series_uid: str
    modality: Modality
    n_instances: int
    folder: Path
    """The series folder holding ``1.dcm`` … ``<n_instances>.dcm``."""
    lesion: bool
    mask: Path
    """The organ segmentation (NIfTI, on the grid dcm2niix writes the series on)."""
    phantom: Phantom
    """Where the organ and lesion are, in patient coordinates and on the voxel grid."""

    def instance_paths(self) -> list[Path]:
        """The instance files in instance-number order (slice 1 is the most inferior)."""
        return [self.folder / f"{n}.dcm" for n in range(1, self.n_instances + 1)]


def write_studies(
    profile: TrustProfile,
    persons: int,
    seed: int,
    out_dir: Path,
    *,
    limit: int | None = None,
    sizes: Mapping[Modality, VolumeSize] | None = None,
) -> list[SyntheticStudy]:
    """Write every imaging study of the dataset ``(profile, persons, seed)`` (or its first ``limit``).

    ``sizes`` gives the volume size per modality (e.g. :data:`CLINICAL_SIZES`); a modality it does not name
    keeps the small default grid. Existing files of the same studies are overwritten (with identical bytes,
    for the same inputs).
    """
    if limit is not None and limit < 0:
        raise ValueError("limit cannot be negative")
    studies: Iterable[ImagingStudy] = image_occurrences(profile, persons, seed)
    if limit is not None:
        studies = islice(studies, limit)
    chosen = sizes or {}
    return [write_study(study, profile, seed, out_dir, size=chosen.get(study.modality)) for study in studies]


def write_study(
    study: ImagingStudy, profile: TrustProfile, seed: int, out_dir: Path, *, size: VolumeSize | None = None
) -> SyntheticStudy:
    """Write one study's series and organ mask under ``out_dir/<accession>/`` (``size``: see :class:`VolumeSize`)."""
    if not _SAFE_NAME.match(study.accession_id):
        raise ValueError(f"accession id {study.accession_id!r} cannot be used as a folder name")
    if not UID(study.series_instance_uid).is_valid:
        raise ValueError(f"series UID {study.series_instance_uid!r} is not a valid DICOM UID")
    scanner = scanner_for(profile)
    rng = _study_rng(profile, seed, study.accession_id)
    phantom = phantom_for(study, scanner, rng, size)
    stored = _encode(render(phantom, scanner, rng), scanner.rescale(study.modality))
    series_folder = out_dir / study.accession_id / study.series_instance_uid
    series_folder.mkdir(parents=True, exist_ok=True)
    dataset = _series_dataset(study, study_phi(study), scanner, phantom.grid)
    for index in range(phantom.grid.slices):
        _set_slice(dataset, study, phantom.grid, index, stored[index])
        dataset.save_as(series_folder / f"{index + 1}.dcm", enforce_file_format=True)
    mask_path = out_dir / study.accession_id / MASK_FILE
    _write_mask(mask_path, phantom)
    return SyntheticStudy(
        accession=study.accession_id,
        study_uid=study.study_instance_uid,
        series_uid=study.series_instance_uid,
        modality=study.modality,
        n_instances=phantom.grid.slices,
        folder=series_folder,
        lesion=phantom.lesion_centre_mm is not None,
        mask=mask_path,
        phantom=phantom,
    )


def sop_instance_uid(series_uid: str, instance_number: int) -> UID:
    """The SOPInstanceUID of instance ``instance_number`` of a synthetic series (a 2.25 UUID-derived UID)."""
    return _derived_uid(series_uid, "instance", str(instance_number))


def _study_rng(profile: TrustProfile, seed: int, accession: str) -> np.random.Generator:
    """A random stream of its own per study, so that ``limit`` and ordering never change a study's pixels."""
    digest = hashlib.blake2b(f"{profile.name}/{seed}/{accession}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "big")))


def _encode(values: np.ndarray, rescale: tuple[float, float]) -> np.ndarray:
    """Stored int16 values the scanner writes for ``values`` given its (slope, intercept)."""
    slope, intercept = rescale
    stored = np.rint((values - intercept) / slope)
    info = np.iinfo(np.int16)
    return np.clip(stored, info.min, info.max).astype("<i2")


def _series_dataset(study: ImagingStudy, phi: StudyPhi, scanner: Scanner, grid: Grid) -> Dataset:
    """The tags all instances of the series share (per-slice ones are set by :func:`_set_slice`)."""
    study_day = study.study_date.strftime("%Y%m%d")
    study_time = _study_time(study.accession_id)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[study.modality]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if study.modality == "CT" else ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = _SOP_CLASS[study.modality]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_day
    ds.StudyTime = study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _later(study_time, minutes=2)
    ds.AccessionNumber = study.accession_id
    ds.Modality = study.modality
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = phi.institution_name
    ds.InstitutionAddress = phi.institution_address
    ds.ReferringPhysicianName = phi.referring_physician
    ds.StationName = phi.station_name
    ds.StudyDescription = phi.study_description
    ds.SeriesDescription = phi.series_description
    ds.PerformingPhysicianName = phi.performing_physician
    ds.OperatorsName = phi.operator
    ds.ManufacturerModelName = scanner.model(study.modality)
    ds.PatientName = phi.patient_name
    ds.PatientID = phi.hospital_number
    ds.PatientBirthDate = phi.birth_date
    ds.PatientSex = study.sex
    ds.OtherPatientIDs = phi.nhs_number
    ds.PatientAge = _age(study.birth_date, study.study_date)
    ds.BodyPartExamined = study.body_part_examined
    ds.SliceThickness = _ds(grid.slice_spacing_mm)
    ds.SpacingBetweenSlices = _ds(grid.slice_spacing_mm)
    ds.DeviceSerialNumber = phi.device_serial_number
    ds.SoftwareVersions = scanner.software_versions
    ds.ProtocolName = f"{study.body_part_examined} routine"
    ds.PatientPosition = "HFS"
    if study.modality == "CT":
        ds.KVP = "120"
        ds.XRayTubeCurrent = 200
        ds.ConvolutionKernel = scanner.ct_kernel
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "15"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = _ds(scanner.field_strength_t)
        ds.ImagingFrequency = _ds(round(42.577 * scanner.field_strength_t, 3))
        ds.ImagedNucleus = "1H"
        ds.FlipAngle = "90"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = study.series_instance_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = _derived_uid(study.series_instance_uid, "frame of reference")
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid.rows
    ds.Columns = grid.columns
    ds.PixelSpacing = [_ds(grid.pixel_spacing_mm), _ds(grid.pixel_spacing_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    slope, intercept = scanner.rescale(study.modality)
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    if study.modality == "CT":
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        ds.WindowCenter, ds.WindowWidth = _ds(400 * scanner.mr_gain), _ds(800 * scanner.mr_gain)
    ds.ImageComments = phi.image_comments
    # Vendors keep patient details in private tags too; de-identification must not miss them.
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", phi.patient_name_text)
    block.add_new(0x02, "LO", phi.hospital_number)
    block.add_new(0x03, "DA", phi.birth_date)
    return ds


def _set_slice(ds: Dataset, study: ImagingStudy, grid: Grid, index: int, pixels: np.ndarray) -> None:
    """Fill in the tags that differ from slice to slice, and the slice's pixels."""
    uid = sop_instance_uid(study.series_instance_uid, index + 1)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = index + 1
    position = grid.slice_position(index)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(position[2])
    ds.PixelData = pixels.tobytes()


def _write_mask(path: Path, phantom: Phantom) -> None:
    """The organ label as gzipped NIfTI; gzip is called directly so that no timestamp or name is stored."""
    affine = phantom.grid.nifti_affine()
    # nibabel's NIfTI class is not annotated, and mypy strict refuses calls into it; these few are checked by tests.
    nifti_image: Any = nib.Nifti1Image
    image = nifti_image(to_nifti_order(phantom.organ_mask().astype(np.uint8)), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def _ds(value: float) -> str:
    """A decimal string (DS) without float noise: at most 16 characters, no trailing zeros."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _study_time(accession: str) -> str:
    """A working-hours HHMMSS for the study, stable per accession id."""
    n = int.from_bytes(hashlib.blake2b(accession.encode(), digest_size=4, person=b"study-time").digest(), "big")
    seconds = 8 * 3600 + n % (9 * 3600)
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _later(hhmmss: str, *, minutes: int) -> str:
    seconds = min(int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:]) + 60 * minutes, 86_399)
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _age(birth: date, on: date) -> str:
    """PatientAge (AS): whole years, or whole months under a year old."""
    months = max(0, (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day))
    return f"{months // 12:03d}Y" if months >= 12 else f"{months:03d}M"
