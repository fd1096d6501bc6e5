"""Builders for the de-identification and NIfTI tests: small CT/MR series stuffed with PHI.

Every identifying value is a distinctive string listed in :data:`PHI_NEEDLES`, so a test can search any
output (element values, raw file bytes, decompressed NIfTI, file names) for all of them at once.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

Modality = Literal["CT", "MR"]

SECRET = b"test-trust-secret-0123456789abcdef"
OTHER_SECRET = b"another-trust-secret-fedcba9876543210"

# Original UIDs use a root nobody else uses here, so any survivor is found by its prefix.
UID_ROOT = "1.3.6.1.4.1.99999.7"

PATIENT_ID = "MRN-8675309-PHI"
STUDY_DATE = "20230517"
BIRTH_DATE = "19610314"

# Attribute keyword → identifying value, for the attributes the profile names.
PHI_ATTRIBUTES: dict[str, str] = {
    "PatientName": "Fakename^Johnathan^Quincy",
    "PatientID": PATIENT_ID,
    "PatientBirthDate": BIRTH_DATE,
    "PatientBirthTime": "013742",
    "OtherPatientIDs": "OTHERID-5551234",
    "OtherPatientNames": "Aliasname^Jonny",
    "PatientBirthName": "Birthname^Johnathan",
    "PatientMotherBirthName": "Mothername^Margaret",
    "PatientAddress": "42 Wallaby Way Sydney",
    "PatientTelephoneNumbers": "+44 20 7946 0958",
    "AdditionalPatientHistory": "History of Johnathan at Wallaby Way",
    "PatientComments": "Patient prefers Quincy",
    "MedicalRecordLocator": "LOCATOR-ROOM-B12",
    "Occupation": "Lighthousekeeper",
    "AccessionNumber": "ACC-777123",
    "StudyID": "STUDYID-4455",
    "StudyDescription": "Brain MRI for Fakename",
    "SeriesDescription": "AX T1 Fakename followup",
    "ReferringPhysicianName": "Referrer^Gregory",
    "ReferringPhysicianAddress": "1 Referral Road Leeds",
    "PhysiciansOfRecord": "Recordkeeper^Lisa",
    "NameOfPhysiciansReadingStudy": "Readingdoc^James",
    "PerformingPhysicianName": "Performer^Allison",
    "OperatorsName": "Operatorname^Chase",
    "RequestingPhysician": "Requester^Robert",
    "InstitutionName": "St Elsewhere General Hospital",
    "InstitutionAddress": "99 Hospital Lane Elsewhereton",
    "InstitutionalDepartmentName": "Radiology Dept Seven",
    "StationName": "STN-ELSEWHERE",
    "DeviceSerialNumber": "SERIAL-XK-99812",
    "SoftwareVersions": "SWVER-SITE-ELSEWHERE",
    "ImageComments": "Johnathan moved during scan",
    "StudyComments": "Call Quincy on 07700900123",
    "RequestedProcedureDescription": "Requested for Fakename",
    "PerformedProcedureStepDescription": "Performed at Elsewhere",
    "PerformedProcedureStepID": "PPSID-31337",
    "ContrastBolusAgent": "Gadovist for Johnathan",
    "DerivationDescription": "Derived by Performer",
}

# Values placed outside the listed attributes: nested, private, unlisted text, overlays, file meta.
NESTED_PHI = "Nestedname^Sequence"
DEEP_NESTED_PHI = "Deepnested^Phivalue"
REQUEST_PHI = "REQPROC-PHI-4471"
PRIVATE_PHI = "Privatetagname^Hidden"
PRIVATE_NESTED_PHI = "Privatenested^Secret"
UNLISTED_TEXT_PHI = "Unlistedtext Fakename Wallaby"
OVERLAY_PHI = "Overlay text Johnathan"
CURVE_PHI = "Curve label Quincy"
CURVE_CS_PHI = "CURVECSNAME"
PRIVATE_CS_PHI = "PRIVCSNAME"
META_PHI = "METAAETITLEPHI"
PREAMBLE_PHI = "Preamble Fakename Johnathan 42 Wallaby Way"

PHI_NEEDLES: tuple[str, ...] = (
    "Fakename",
    "Johnathan",
    "Quincy",
    PATIENT_ID,
    "8675309",
    BIRTH_DATE,
    STUDY_DATE,
    "013742",
    "OTHERID-5551234",
    "Aliasname",
    "Birthname",
    "Mothername",
    "Wallaby",
    "7946 0958",
    "LOCATOR-ROOM",
    "Lighthouse",
    "ACC-777123",
    "777123",
    "STUDYID-4455",
    "Referrer",
    "Referral Road",
    "Recordkeeper",
    "Readingdoc",
    "Performer",
    "Operatorname",
    "Requester",
    "Elsewhere",
    "Radiology Dept",
    "SERIAL-XK",
    "SWVER-SITE",
    "07700900123",
    "PPSID-31337",
    "Gadovist",
    "Nestedname",
    "Deepnested",
    REQUEST_PHI,
    "Privatetagname",
    "Privatenested",
    "Unlistedtext",
    "Overlay text",
    "Curve label",
    CURVE_CS_PHI,
    PRIVATE_CS_PHI,
    META_PHI,
    UID_ROOT,
)


@dataclass
class BuiltSeries:
    """A series as written to disk, with the facts the tests compare against."""

    modality: Modality
    datasets: list[FileDataset]
    study_uid: str
    series_uid: str
    frame_uid: str
    sop_uids: list[str]
    shape: tuple[int, int, int]  # (columns, rows, slices): dcm2niix's NIfTI order for axial slices
    spacing: tuple[float, float, float]  # (column spacing, row spacing, slice spacing)
    paths: list[Path] = field(default_factory=list)


def _uid(*parts: int) -> UID:
    return UID(".".join([UID_ROOT, *(str(p) for p in parts)]))


def _code_item(meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = "T-A0100"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = meaning
    return item


def _pixels(modality: Modality, rows: int, cols: int, slices: int) -> np.ndarray:
    """A bright ellipsoid on a background; values stay below 4096 so no run of ASCII digits can appear."""
    z, y, x = np.mgrid[0:slices, 0:rows, 0:cols]
    inside = ((x - cols / 2) / (cols / 3)) ** 2 + ((y - rows / 2) / (rows / 3)) ** 2 + ((z - slices / 2) / slices) ** 2
    base = np.where(inside < 1.0, 1800, 300) + (x + 3 * y + 7 * z) % 50
    pixels: np.ndarray = base.astype(np.int16 if modality == "CT" else np.uint16)
    return pixels


def build_series(
    modality: Modality,
    *,
    series_no: int = 1,
    slices: int = 4,
    rows: int = 16,
    cols: int = 20,
    study_uid: str | None = None,
    frame_uid: str | None = None,
) -> BuiltSeries:
    """Build an axial series with valid geometry and PHI in every place the corpus covers."""
    study_uid = study_uid or _uid(1, 1)
    series_uid = _uid(2, series_no)
    frame_uid = frame_uid or _uid(3, 1)
    sop_uids: list[str] = [_uid(4, series_no, i + 1) for i in range(slices)]
    row_spacing, col_spacing, slice_spacing = 0.8, 0.9, 2.5
    volume = _pixels(modality, rows, cols, slices)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    datasets: list[FileDataset] = []
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = UID(sop_uids[i])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _uid(9, 9)
        meta.SourceApplicationEntityTitle = META_PHI
        meta.PrivateInformationCreatorUID = _uid(9, 8)
        meta.PrivateInformation = PRIVATE_PHI.encode("ascii")
        preamble = PREAMBLE_PHI.encode("ascii").ljust(128, b"\0")
        ds = FileDataset(f"slice{i}.dcm", {}, file_meta=meta, preamble=preamble)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uids[i]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.Manufacturer = "SIEMENS" if modality == "MR" else "GE MEDICAL SYSTEMS"
        ds.ManufacturerModelName = "Prisma" if modality == "MR" else "Revolution"
        for keyword, value in PHI_ATTRIBUTES.items():
            setattr(ds, keyword, value)
        ds.PatientSex = "M"
        ds.PatientAge = "061Y"
        ds.PatientWeight = 81.5
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
        ds.StudyTime = ds.SeriesTime = "093015"
        ds.AcquisitionTime = ds.ContentTime = f"0930{15 + i:02d}"
        ds.AcquisitionDateTime = f"{STUDY_DATE}0930{15 + i:02d}+0100"
        ds.InstanceCreationDate = STUDY_DATE
        ds.DateOfLastCalibration = "20230101"
        ds.ProtocolName = "T1 AX"
        ds.SeriesNumber = series_no
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BurnedInAnnotation = "NO"
        # Geometry dcm2niix needs to stack the slices.
        ds.ImagePositionPatient = [-10.0, -8.0, i * slice_spacing]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [row_spacing, col_spacing]
        ds.SliceThickness = slice_spacing
        ds.SliceLocation = i * slice_spacing
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        if modality == "CT":
            ds.PixelRepresentation = 1
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.KVP = 120
            ds.ConvolutionKernel = "STANDARD"
        else:
            ds.PixelRepresentation = 0
            ds.MagneticFieldStrength = 3
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "2D"
            ds.EchoTime, ds.RepetitionTime, ds.FlipAngle = 4.6, 250.0, 70
            ds.ImagingFrequency = 123.25
            ds.SequenceName = "*fl2d1"
        ds.PixelData = volume[i].tobytes()
        # Nested sequences: a request with order numbers, a reference to slice 0, an unlisted sequence
        # with free text two levels deep.
        request = Dataset()
        request.RequestedProcedureID = REQUEST_PHI
        request.AccessionNumber = PHI_ATTRIBUTES["AccessionNumber"]
        request.RequestingPhysician = NESTED_PHI
        ds.RequestAttributesSequence = Sequence([request])
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_uids[0]
        ds.ReferencedImageSequence = Sequence([ref])
        region = _code_item(NESTED_PHI)
        region.AnatomicRegionModifierSequence = Sequence([_code_item(DEEP_NESTED_PHI)])
        region.add_new(0x00431010, "LO", PRIVATE_NESTED_PHI)  # private, nested, no creator
        ds.AnatomicRegionSequence = Sequence([region])
        other = Dataset()
        other.PatientID = "OTHERID-5551234"
        other.IssuerOfPatientID = "Elsewhere Trust"
        ds.OtherPatientIDsSequence = Sequence([other])
        # Unlisted free text, which the VR rule must drop.
        ds.FilterType = "Unlistedtext"
        ds.add_new(0x00081084, "SQ", Sequence([_code_item(UNLISTED_TEXT_PHI)]))  # AdmittingDiagnosesCodeSequence
        ds.ClinicalTrialSponsorName = UNLISTED_TEXT_PHI
        # Private block with a creator, a text value and an opaque value.
        block = ds.private_block(0x0009, "HOSPITAL PHI CREATOR", create=True)
        block.add_new(0x10, "LO", PRIVATE_PHI)
        block.add_new(0x11, "UN", f"{PRIVATE_PHI} raw".encode("ascii"))
        block.add_new(0x12, "CS", PRIVATE_CS_PHI)  # a VR the text rule keeps: only the private rule removes it
        # Overlay and (retired) curve with text.
        ds.add(DataElement(0x60000010, "US", rows))
        ds.add(DataElement(0x60000011, "US", cols))
        ds.add(DataElement(0x60000022, "LO", OVERLAY_PHI))
        ds.add(DataElement(0x60003000, "OW", b"\x01\x00" * (rows * cols // 16)))
        ds.add(DataElement(0x50002500, "LO", CURVE_PHI))
        ds.add(DataElement(0x50000020, "CS", CURVE_CS_PHI))  # Type of Data: caught only by the curve rule
        datasets.append(ds)
    return BuiltSeries(
        modality=modality,
        datasets=datasets,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_uid=frame_uid,
        sop_uids=sop_uids,
        shape=(cols, rows, slices),
        spacing=(col_spacing, row_spacing, slice_spacing),
    )


def write_series(series: BuiltSeries, folder: Path) -> list[Path]:
    """Write the series as Part-10 files (named by instance number) and remember their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    series.paths = []
    for ds in series.datasets:
        path = folder / f"{series.modality}_{int(ds.SeriesNumber)}_{int(ds.InstanceNumber):03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        series.paths.append(path)
    return series.paths


def iter_files(folder: Path) -> Iterator[Path]:
    """Every regular file below ``folder``."""
    yield from sorted(p for p in folder.rglob("*") if p.is_file())


def file_bytes(path: Path) -> bytes:
    """The file's raw bytes, followed by its decompressed bytes when it is gzip (NIfTI headers)."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw += gzip.decompress(raw)
    return raw


def phi_found(text: str | bytes) -> list[str]:
    """The needles that occur in ``text`` (case-insensitive)."""
    haystack = (text.decode("latin-1") if isinstance(text, bytes) else text).lower()
    return [needle for needle in PHI_NEEDLES if needle.lower() in haystack]
