"""De-identification of DICOM instances (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile).

Every image leaves the trust's PACS through :class:`Deidentifier` before it reaches the research store.
The profile is applied as an explicit action table (:data:`ACTIONS`) plus VR-based fallback rules for
attributes the table does not name, so an attribute nobody thought of is dropped rather than kept.

Options of PS3.15 Table E.1-1 that we use (recorded in the output's De-identification Method Code Sequence):

* **Retain Longitudinal Temporal Information with Modified Dates** (113107): every DA/DT value is shifted
  back by a whole number of days derived from the per-trust secret and the original Patient ID. Intervals
  between a patient's studies survive (useful for follow-up imaging); calendar dates do not. Times of day
  are kept: shifting by whole days keeps them consistent with the shifted dates.
* **Retain Patient Characteristics** (113108): Patient's Sex, Age, Size and Weight are kept because they
  matter for image analysis (intensity normalisation, dose) and are weak identifiers on their own.
  Patient's Birth Date is *not* kept (emptied); the age says what is needed.
* **Clean Descriptors** (113105): Study/Series Description and Protocol Name are kept only when every word
  is on a small vocabulary of acquisition terms (``AX T1 POST CONTRAST``); anything else is removed.

Not used: Clean Pixel Data (instances flagged with burned-in annotation are refused instead), Retain UIDs
(all UIDs are pseudonymised), Retain Device Identity, Retain Institution Identity, Clean Structured Content.

Pseudonyms are deterministic: ``HMAC-SHA256(secret, ...)``. The same trust always maps the same UID, patient
or accession to the same value, so references between instances stay consistent and a re-import produces
identical files; without the secret the mapping cannot be reversed or recomputed.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import io
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

__all__ = [
    "ACTIONS",
    "KEEP_TEXT",
    "Action",
    "DeidError",
    "DeidentifiedFile",
    "Deidentifier",
    "PseudonymKind",
    "is_image",
]


class DeidError(Exception):
    """An instance that cannot (or must not) be de-identified; the message is safe to show (no PHI)."""


@dataclass(frozen=True)
class DeidentifiedFile:
    """One de-identified instance as written: where, its (pseudonymised) series, and the bytes' checksum."""

    path: Path
    series_uid: str
    sha256: str
    size: int


class Action(StrEnum):
    """Action codes of PS3.15 Table E.1-1."""

    DUMMY = "D"  # replace with a non-identifying value (here: a deterministic pseudonym)
    ZERO = "Z"  # keep the attribute, empty its value (Type 2 attributes)
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"  # keep a cleaned value: shifted date, or descriptor checked against the vocabulary
    UID = "U"  # replace with a pseudonymised UID


PseudonymKind = Literal["patient", "accession", "study", "series"]
"""What a pseudonym stands for; part of the HMAC input so a patient and an accession never collide."""

_PSEUDONYM_PREFIX: Final[Mapping[str, str]] = {"patient": "P", "accession": "A", "study": "S", "series": "R"}

# --- The action table -------------------------------------------------------------------------------------
# Derived from the attribute list of PS3.15 Table E.1-1, restricted to what CT/MR instances and their
# workflow (orders, procedure steps, equipment) actually carry. Keywords are resolved to tags at import,
# so a typo fails loudly. Anything not listed falls through to the VR rules in `Deidentifier._clean`.
_ACTION_TABLE: Final[tuple[tuple[Action, tuple[str, ...]], ...]] = (
    # Patient identity: replaced by the per-trust pseudonym so a trust can link studies of one patient.
    (Action.DUMMY, ("PatientName", "PatientID", "AccessionNumber")),
    # Type 2 attributes that must stay present but empty.
    (Action.ZERO, ("PatientBirthDate", "ReferringPhysicianName", "StudyID")),
    # Retain Patient Characteristics option.
    (Action.KEEP, ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")),
    # Patient: other identifiers, names, contact details, history.
    (
        Action.REMOVE,
        (
            "PatientBirthTime",
            "PatientBirthName",
            "PatientMotherBirthName",
            "OtherPatientIDs",
            "OtherPatientIDsSequence",
            "OtherPatientNames",
            "IssuerOfPatientID",
            "IssuerOfPatientIDQualifiersSequence",
            "PatientAddress",
            "PatientTelephoneNumbers",
            "PatientTelecomInformation",
            "CountryOfResidence",
            "RegionOfResidence",
            "MilitaryRank",
            "BranchOfService",
            "MedicalRecordLocator",
            "Occupation",
            "EthnicGroup",
            "PatientReligiousPreference",
            "PatientSexNeutered",
            "SmokingStatus",
            "PregnancyStatus",
            "LastMenstrualDate",
            "MedicalAlerts",
            "Allergies",
            "SpecialNeeds",
            "PatientState",
            "AdditionalPatientHistory",
            "PatientComments",
            "ResponsiblePerson",
            "ResponsiblePersonRole",
            "ResponsibleOrganization",
            "PatientInsurancePlanCodeSequence",
            "PatientPrimaryLanguageCodeSequence",
            "PatientInstitutionResidence",
            "CurrentPatientLocation",
            "PatientTransportArrangements",
            "ReferencedPatientSequence",
            "ReferencedPatientPhotoSequence",
            "VisitComments",
            "AdmissionID",
            "IssuerOfAdmissionIDSequence",
            "AdmittingDiagnosesDescription",
            "AdmittingDiagnosesCodeSequence",
            "ServiceEpisodeID",
            "ServiceEpisodeDescription",
        ),
    ),
    # Study, request and procedure step: orders and their free text name people and reasons.
    (
        Action.REMOVE,
        (
            "IssuerOfAccessionNumberSequence",
            "ReferringPhysicianAddress",
            "ReferringPhysicianTelephoneNumbers",
            "ReferringPhysicianIdentificationSequence",
            "ConsultingPhysicianName",
            "ConsultingPhysicianIdentificationSequence",
            "PhysiciansOfRecord",
            "PhysiciansOfRecordIdentificationSequence",
            "NameOfPhysiciansReadingStudy",
            "PhysiciansReadingStudyIdentificationSequence",
            "RequestingPhysician",
            "RequestingService",
            "RequestedProcedureDescription",
            "RequestedProcedureCodeSequence",
            "RequestedProcedureID",
            "RequestedContrastAgent",
            "RequestAttributesSequence",
            "ReasonForTheRequestedProcedure",
            "ReasonForRequestedProcedureCodeSequence",
            "PlacerOrderNumberImagingServiceRequest",
            "FillerOrderNumberImagingServiceRequest",
            "OrderEnteredBy",
            "OrderEntererLocation",
            "OrderCallbackPhoneNumber",
            "ImagingServiceRequestComments",
            "StudyComments",
            "ReferencedStudySequence",
            "ProcedureCodeSequence",
            "PerformedProcedureStepID",
            "PerformedProcedureStepDescription",
            "CommentsOnThePerformedProcedureStep",
            "PerformedLocation",
            "PerformedStationName",
            "PerformedStationAETitle",
            "ScheduledProcedureStepDescription",
            "ScheduledPerformingPhysicianName",
            "ScheduledStationName",
            "ScheduledStudyLocation",
            "ReferencedPerformedProcedureStepSequence",
            "ScheduledProcedureStepID",
        ),
    ),
    # Series, equipment and staff.
    (
        Action.REMOVE,
        (
            "PerformingPhysicianName",
            "PerformingPhysicianIdentificationSequence",
            "OperatorsName",
            "OperatorIdentificationSequence",
            "InstitutionName",
            "InstitutionAddress",
            "InstitutionalDepartmentName",
            "InstitutionCodeSequence",
            "InstitutionalDepartmentTypeCodeSequence",
            "StationName",
            "DeviceSerialNumber",
            "DeviceDescription",
            "DetectorID",
            "GantryID",
            "SoftwareVersions",
            "ContrastBolusAgent",
            "DerivationDescription",
            "AcquisitionComments",
            "AcquisitionDeviceProcessingDescription",
            "ImageComments",
            "IconImageSequence",
            "TimezoneOffsetFromUTC",
            "StorageMediaFileSetID",
        ),
    ),
    # Structured content, signatures and audit trails: may embed anything, including original values.
    (
        Action.REMOVE,
        (
            "ContentSequence",
            "TextValue",
            "PersonName",
            "ContentCreatorName",
            "ContentCreatorIdentificationCodeSequence",
            "VerifyingObserverName",
            "VerifyingObserverSequence",
            "AuthorObserverSequence",
            "DigitalSignaturesSequence",
            "MACParametersSequence",
            "EncryptedAttributesSequence",
            "OriginalAttributesSequence",
            "ModifiedAttributesSequence",
        ),
    ),
    # Clean Descriptors option (text) and Modified Dates option (dates).
    (Action.CLEAN, ("StudyDescription", "SeriesDescription", "ProtocolName")),
    (
        Action.CLEAN,
        ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime", "InstanceCreationDate"),
    ),
    # References between instances: kept so nested UIDs can be remapped consistently.
    (Action.KEEP, ("ReferencedImageSequence", "SourceImageSequence", "ReferencedSeriesSequence")),
    # Every instance UID (the VR rule would catch them too; listed because the profile names them).
    (
        Action.UID,
        (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
            "SynchronizationFrameOfReferenceUID",
            "ReferencedFrameOfReferenceUID",
            "RelatedFrameOfReferenceUID",
            "ReferencedSOPInstanceUID",
            "ReferencedSOPInstanceUIDInFile",
            "InstanceCreatorUID",
            "IrradiationEventUID",
            "DeviceUID",
            "StorageMediaFileSetUID",
            "ConcatenationUID",
            "DimensionOrganizationUID",
            "TransactionUID",
        ),
    ),
    # Class UIDs name a kind of object, not an instance.
    (Action.KEEP, ("SOPClassUID", "ReferencedSOPClassUID")),
)


def _resolve(table: Iterable[tuple[Action, tuple[str, ...]]]) -> dict[BaseTag, Action]:
    resolved: dict[BaseTag, Action] = {}
    for action, keywords in table:
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise RuntimeError(f"unknown DICOM keyword in the action table: {keyword}")
            if Tag(tag) in resolved:
                raise RuntimeError(f"DICOM keyword listed twice in the action table: {keyword}")
            resolved[Tag(tag)] = action
    return resolved


ACTIONS: Final[Mapping[BaseTag, Action]] = MappingProxyType(_resolve(_ACTION_TABLE))
"""The PS3.15 action for each attribute the profile names (tag → action)."""

KEEP_TEXT: Final[frozenset[BaseTag]] = frozenset(
    Tag(t)
    for t in (
        tag_for_keyword(k)
        for k in (
            "Manufacturer",
            "ManufacturerModelName",
            "SequenceName",
            "ConvolutionKernel",
            "ImagedNucleus",
            "TransmitCoilName",
            "ReceiveCoilName",
            "RescaleType",
        )
    )
    if t is not None
)
"""Text attributes absent from the table that are kept: acquisition descriptors that name equipment models
and techniques, never people or places. Every other free-text attribute not in the table is removed."""

# Value representations that can carry free text; unlisted attributes with these VRs are removed.
_TEXT_VRS: Final[frozenset[str]] = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "UR", "AE"})
# Opaque binary VRs: only Pixel Data is kept (anything else could hold an embedded document or photo).
_BINARY_VRS: Final[frozenset[str]] = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW"})
_PIXEL_DATA: Final = Tag(0x7FE0, 0x0010)
_BURNED_IN_ANNOTATION: Final = Tag(0x0028, 0x0301)
# What a written UID must look like: it becomes a file or folder name.
_SAFE_UID: Final = re.compile(r"[0-9]+(\.[0-9]+)*")
# Well-known UIDs defined by the standard itself (SOP classes, transfer syntaxes, coding schemes).
_DICOM_UID_ROOT: Final = "1.2.840.10008."

# Words allowed in a cleaned descriptor: sequence names, orientations, body regions, contrast phases.
_VOCABULARY_TEXT: Final = """
    CT MR MRI PET SCOUT LOCALIZER LOCALISER SURVEY TOPOGRAM SCANOGRAM CALIBRATION
    T1 T2 T1W T2W PD PDW FLAIR STIR DWI DTI ADC TRACE SWI SWAN BOLD EPI GRE SE TSE FSE SPGR FSPGR MPRAGE
    MP2RAGE VIBE HASTE TRUFI FIESTA DIXON TOF MRA MRV PERFUSION DSC DCE ASL SPACE CUBE VISTA BRAVO
    FAT SAT FS WATER IN OUT OPP PHASE MAG MAGNITUDE ECHO MULTI SINGLE SHOT
    AX AXI AXIAL COR CORO CORONAL SAG SAGITTAL OBL OBLIQUE TRA TRANS TRANSVERSE ISO 2D 3D MPR MIP RECON
    HEAD BRAIN NECK CHEST THORAX LUNG LUNGS ABDOMEN ABD PELVIS LIVER KIDNEY SPINE CSPINE TSPINE LSPINE
    KNEE HIP SHOULDER CARDIAC HEART PROSTATE BREAST WHOLE BODY ORBITS SINUS SINUSES
    WITH WITHOUT W WO C NON PRE POST CONTRAST PLAIN NATIVE ARTERIAL VENOUS PORTAL DELAYED LATE EARLY
    ROUTINE STANDARD SOFT TISSUE BONE LUNG MEDIASTINUM HIGH LOW RES RESOLUTION THIN THICK SLICE SLICES
    MM SHARP SMOOTH KERNEL DOSE SERIES STUDY EXAM PROTOCOL AND OF
"""
_DESCRIPTOR_VOCABULARY: Final[frozenset[str]] = frozenset(_VOCABULARY_TEXT.split())
_WORD: Final = re.compile(r"[A-Za-z0-9.]+")
_SHORT_NUMBER: Final = re.compile(r"\d{1,3}(?:\.\d{1,3})?(?:MM)?")
_DATE_LIKE: Final = re.compile(r"\d{1,4}\s*[-/.]\s*\d{1,2}\s*[-/.]\s*\d{1,4}|\d{5,}")


def _clean_descriptor(value: str) -> str | None:
    """Return the descriptor if every word is an acquisition term, else None (the attribute is removed)."""
    if _DATE_LIKE.search(value):
        return None
    # Anything other than words, short numbers and simple punctuation (e.g. '@', ':', quotes) is suspect.
    if re.search(r"[^A-Za-z0-9 ._+\-()/]", value):
        return None
    for word in _WORD.findall(value.upper()):
        if word not in _DESCRIPTOR_VOCABULARY and not _SHORT_NUMBER.fullmatch(word):
            return None
    return value


@dataclass(frozen=True)
class _Context:
    """Per-instance facts taken before any element is changed."""

    patient_id: str
    shift: dt.timedelta


# Date shift window: at least a year, at most ~10 years back, so shifted dates stay plausible.
_MIN_SHIFT_DAYS: Final = 365
_SHIFT_SPAN_DAYS: Final = 3285


class Deidentifier:
    """Applies the basic profile with this trust's secret; instances are independent but consistent."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 bytes")
        self._secret = secret

    # --- deterministic mappings ---------------------------------------------------------------------------

    def _digest(self, domain: str, value: str) -> bytes:
        # The domain keeps the mappings apart: a UID, a patient ID and a date shift never share an input.
        message = domain.encode("ascii") + b"\x00" + value.encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def pseudonym(self, kind: PseudonymKind, value: str) -> str:
        """Deterministic pseudonym for an identifier (16 characters, fits SH/LO).

        The trust can call this to keep its own accession ↔ pseudonym mapping; the hub only sees pseudonyms.
        """
        prefix = _PSEUDONYM_PREFIX[kind]
        return prefix + self._digest(f"pseudonym:{kind}", value.strip()).hex()[:15].upper()

    def uid(self, uid: str) -> str:
        """Pseudonymised UID ``2.25.<integer>`` (at most 44 characters, always the same for the same input)."""
        # 128 bits of the HMAC, as for UUID-derived 2.25 UIDs: at most 39 digits, well inside the 64 limit.
        number = int.from_bytes(self._digest("uid", uid.strip().rstrip("\x00"))[:16], "big")
        return f"2.25.{number}"

    def date_shift_days(self, patient_id: str) -> int:
        """Days every date of this patient is moved back (Modified Dates option)."""
        digest = self._digest("date-shift", patient_id.strip())
        return _MIN_SHIFT_DAYS + int.from_bytes(digest[:4], "big") % _SHIFT_SPAN_DAYS

    # --- datasets and files -------------------------------------------------------------------------------

    def dataset(self, ds: Dataset) -> Dataset:
        """Return a de-identified copy of ``ds`` (file meta rebuilt, preamble dropped); ``ds`` is unchanged."""
        return self._deidentified(ds, copy_first=True)

    def _deidentified(self, ds: Dataset, *, copy_first: bool) -> Dataset:
        if _BURNED_IN_ANNOTATION in ds and str(ds[_BURNED_IN_ANNOTATION].value).strip().upper() == "YES":
            # The basic profile cannot clean text burned into pixels; such instances must not leave the trust.
            raise DeidError("instance has burned-in annotation (0028,0301 = YES); refusing to release it")
        original_patient_id = str(ds.get("PatientID", "") or "")
        transfer_syntax = None
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            transfer_syntax = UID(str(meta.TransferSyntaxUID))

        # Dataset(...) keeps the elements only: no preamble, file name or original file meta.  A dataset
        # read from a file just for this is changed in place: copying it costs a third of the work.
        out = Dataset(copy.deepcopy(ds) if copy_first else ds)
        if None not in ds.original_encoding:
            # Lets the writer copy undecoded elements byte for byte when the encoding stays the same (without
            # it, every element would be decoded and re-encoded).
            implicit_vr, little_endian = ds.original_encoding
            out.set_original_encoding(implicit_vr, little_endian, ds.original_character_set)
        ctx = _Context(
            patient_id=original_patient_id, shift=dt.timedelta(days=self.date_shift_days(original_patient_id))
        )
        self._clean(out, ctx)
        self._mark(out)
        if "SOPInstanceUID" in out:
            file_meta = FileMetaDataset()
            file_meta.MediaStorageSOPClassUID = out.get("SOPClassUID", "")
            file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
            if transfer_syntax is not None:
                file_meta.TransferSyntaxUID = transfer_syntax
            file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            file_meta.ImplementationVersionName = "FLIP_DEID_1"
            out.file_meta = file_meta
        return out

    def file(self, src: Path, dst_dir: Path) -> Path:
        """De-identify a Part-10 file into ``dst_dir`` as ``<new SOP Instance UID>.dcm``; return its path."""
        try:
            ds = pydicom.dcmread(src)
        except Exception as exc:  # pydicom raises many types on corrupt input; all mean "unreadable"
            # Messages never echo the path: PACS file and folder names can carry original UIDs or names.
            raise DeidError(f"not a readable DICOM Part-10 file ({type(exc).__name__})") from exc
        return self.write(ds, dst_dir).path

    def write(self, ds: Dataset, dst_dir: Path, *, series_folders: bool = False) -> DeidentifiedFile:
        """De-identify an instance read from a file or received from a PACS, and write it as a Part-10 file.

        ``ds`` must carry ``file_meta.TransferSyntaxUID`` (the syntax its elements are encoded in); it is
        changed in place. The file is ``dst_dir/<new SOP Instance UID>.dcm``, or with ``series_folders``
        ``dst_dir/<new Series Instance UID>/<new SOP Instance UID>.dcm``. The same checks as :meth:`file`
        apply (readable, an image with complete pixel data, no burned-in annotation): :class:`DeidError`.
        Returns where it went, with the sha256 and size of the bytes written, so nobody has to read it again.
        """
        try:
            _check_instance(ds)
            out = self._deidentified(ds, copy_first=False)
        except DeidError:
            raise
        except Exception as exc:  # a value that had to be decoded could not be: a corrupt instance
            raise DeidError(f"not a readable DICOM Part-10 file ({type(exc).__name__})") from exc
        if series_folders:
            series_uid = str(out.get("SeriesInstanceUID", "") or "")
            if not _SAFE_UID.fullmatch(series_uid):
                raise DeidError("missing or malformed Series Instance UID")
            dst_dir = dst_dir / series_uid
        sop_uid = str(out.SOPInstanceUID)
        if not _SAFE_UID.fullmatch(sop_uid):
            raise DeidError("malformed SOP Instance UID")
        buffer = io.BytesIO()
        try:
            pydicom.dcmwrite(buffer, out, enforce_file_format=True)
        except Exception as exc:
            raise DeidError(f"could not encode the de-identified instance ({type(exc).__name__})") from exc
        encoded = buffer.getbuffer()
        dst = dst_dir / f"{sop_uid}.dcm"
        # Write then rename, so a crash never leaves a half-written file under its final name.
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            dst_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(encoded)
            tmp.replace(dst)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DeidError(f"could not write the de-identified file ({type(exc).__name__})") from exc
        return DeidentifiedFile(
            path=dst,
            series_uid=str(out.get("SeriesInstanceUID", "") or ""),
            sha256=hashlib.sha256(encoded).hexdigest(),
            size=len(encoded),
        )

    # --- the profile --------------------------------------------------------------------------------------

    def _clean(self, ds: Dataset, ctx: _Context) -> None:
        """Apply the table and the VR rules to every element of ``ds``, recursing into sequences.

        Elements are looked at undecoded (tag and VR only) and decoded only when their value must change
        (UIDs, dates, pseudonyms, descriptors, sequences): what is kept unchanged is written back byte for
        byte, and what is removed is never decoded. Most of an image's elements are one or the other.
        """
        for tag in list(ds.keys()):
            if self._remove_outright(tag):
                del ds[tag]
                continue
            action = ACTIONS.get(tag)
            if action is None:
                rule = _vr_rule(tag, _undecoded_vr(ds.get_item(tag)))
                if rule == "remove":
                    del ds[tag]
                elif rule == "decode":
                    self._apply_vr_rule(ds, ds[tag], ctx)
            elif action is Action.REMOVE:
                del ds[tag]
            elif action is not Action.KEEP or _undecoded_vr(ds.get_item(tag)) in ("SQ", None):
                self._apply(ds, ds[tag], action, ctx)

    @staticmethod
    def _remove_outright(tag: BaseTag) -> bool:
        # Private tags: vendor-defined content, often patient names or scanner logs.
        if tag.is_private:
            return True
        # Curves (50xx) and overlays (60xx): retired graphics and text annotations drawn over the image.
        if 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
            return True
        # Group lengths are recomputed on write (and are retired anyway).
        return tag.element == 0x0000

    def _apply(self, ds: Dataset, elem: DataElement, action: Action, ctx: _Context) -> None:
        match action:
            case Action.REMOVE:
                del ds[elem.tag]
            case Action.ZERO:
                elem.value = Sequence() if elem.VR == "SQ" else None
            case Action.DUMMY if elem.keyword == "AccessionNumber":
                elem.value = self.pseudonym("accession", str(elem.value or ""))
            case Action.DUMMY if elem.keyword == "PatientName":
                # The name mirrors the ID so both denote the same pseudonymous patient.
                elem.value = self.pseudonym("patient", ctx.patient_id)
            case Action.DUMMY:
                elem.value = self.pseudonym("patient", str(elem.value or ""))
            case Action.UID:
                self._replace_uids(elem)
            case Action.CLEAN:
                if elem.VR in ("DA", "DT"):
                    self._shift_dates(ds, elem, ctx.shift)
                else:
                    cleaned = _clean_descriptor(str(elem.value or ""))
                    if cleaned is None:
                        del ds[elem.tag]
                    else:
                        elem.value = cleaned
            case Action.KEEP:
                if elem.VR == "SQ":
                    self._clean_items(elem, ctx)

    def _apply_vr_rule(self, ds: Dataset, elem: DataElement, ctx: _Context) -> None:
        vr = elem.VR
        if vr == "SQ":
            self._clean_items(elem, ctx)
        elif vr == "UI":
            self._replace_uids(elem)
        elif vr in ("DA", "DT"):
            self._shift_dates(ds, elem, ctx.shift)
        elif vr in _TEXT_VRS:
            if elem.tag not in KEEP_TEXT:
                del ds[elem.tag]
        elif vr in _BINARY_VRS and elem.tag != _PIXEL_DATA:
            del ds[elem.tag]
        # Numbers, code strings (CS), times, ages and tags carry no free text: kept.

    def _clean_items(self, elem: DataElement, ctx: _Context) -> None:
        for item in elem.value:
            self._clean(item, ctx)

    def _replace_uids(self, elem: DataElement) -> None:
        def one(value: Any) -> str:
            text = str(value).strip().rstrip("\x00")
            if not text or text.startswith(_DICOM_UID_ROOT):
                return text
            return self.uid(text)

        if isinstance(elem.value, MultiValue):
            elem.value = [one(v) for v in elem.value]
        elif elem.value is not None:
            elem.value = one(elem.value)

    @staticmethod
    def _shift_dates(ds: Dataset, elem: DataElement, shift: dt.timedelta) -> None:
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        shifted = [_shift_one(str(v or ""), elem.VR, shift) for v in values]
        if any(s is None for s in shifted):
            # An unparseable date could be anything; drop it rather than guess.
            del ds[elem.tag]
            return
        texts = [s for s in shifted if s is not None]
        elem.value = texts if len(texts) > 1 else (texts[0] if texts else None)

    @staticmethod
    def _mark(ds: Dataset) -> None:
        """Record that and how this instance was de-identified (PS3.15 E.1.1 requirements)."""
        ds.PatientIdentityRemoved = "YES"
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        ds.DeidentificationMethod = [
            "DICOM PS3.15 E.1 Basic Application Confidentiality Profile",
            "Options: Modified Dates, Patient Characteristics",
            "Options: Clean Descriptors",
        ]
        codes = Sequence()
        for value, meaning in _METHOD_CODES:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes


_METHOD_CODES: Final[tuple[tuple[str, str], ...]] = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113105", "Clean Descriptors Option"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
)


def is_image(ds: Dataset) -> bool:
    """True for an instance that is (or claims to be) an image: it has pixel data or an image SOP class.

    A study holds other objects too: dose reports, key object selections, presentation states. They are not
    part of any volume and are not imported. An instance of an image class without pixel data is an image
    all the same, and :meth:`Deidentifier.write` refuses it as incomplete.
    """
    if _PIXEL_DATA in ds:
        return True
    return "Image" in UID(str(ds.get("SOPClassUID", "") or "")).name


def _check_instance(ds: Dataset) -> None:
    """Refuse what must not be de-identified: not an image, incomplete pixel data (:class:`DeidError`).

    Values are not decoded here: what is kept unchanged is copied as it came, and what is rewritten is
    decoded by the profile, where a value that cannot be decoded refuses the instance.
    """
    if _PIXEL_DATA not in ds:
        raise DeidError("no pixel data; only images are imported")
    meta = getattr(ds, "file_meta", None)
    if "SOPInstanceUID" not in ds or meta is None or "TransferSyntaxUID" not in meta:
        raise DeidError("missing SOP Instance UID or transfer syntax")
    if not _pixel_data_complete(ds):
        raise DeidError("pixel data shorter than Rows x Columns x frames says (truncated file?)")


def _pixel_data_complete(ds: Dataset) -> bool:
    """False when native (uncompressed) pixel data is shorter than the image geometry requires."""
    if UID(str(ds.file_meta.TransferSyntaxUID)).is_compressed:
        return True  # encapsulated fragments: the decoder downstream judges them
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
            // 8
        )
    except (AttributeError, TypeError, ValueError):
        return False
    return len(ds.PixelData) >= expected


# VRs whose values are kept exactly as they are: numbers, code strings, times, ages, tags.
_KEPT_VRS: Final[frozenset[str]] = frozenset(
    {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS", "CS", "TM", "AS", "AT", "US or SS"}
)


def _undecoded_vr(elem: DataElement | RawDataElement) -> str | None:
    """The VR of an element without decoding its value; None when only decoding can tell.

    An implicit-VR element's VR comes from the data dictionary; an explicit ``UN`` is left to pydicom, which
    replaces it by the dictionary's VR when decoding.
    """
    if not isinstance(elem, RawDataElement):
        return elem.VR
    if elem.VR is not None and elem.VR != "UN":
        return elem.VR
    if elem.VR is None and dictionary_has_tag(elem.tag):
        return dictionary_VR(elem.tag)
    return None


def _vr_rule(tag: BaseTag, vr: str | None) -> Literal["keep", "remove", "decode"]:
    """What the VR rules do with an element the action table does not name, judged from its VR alone."""
    if vr is None or vr in ("SQ", "UI", "DA", "DT"):
        return "decode"  # rewritten (or, VR unknown, judged once decoded)
    if vr in _TEXT_VRS:
        return "keep" if tag in KEEP_TEXT else "remove"
    if vr in _BINARY_VRS:
        return "keep" if tag == _PIXEL_DATA else "remove"
    if vr in _KEPT_VRS:
        return "keep"
    return "decode"  # an unusual VR (e.g. an ambiguous one): the decoded element's VR decides


def _shift_one(value: str, vr: str, shift: dt.timedelta) -> str | None:
    """Shift one DA/DT value back by ``shift``; None when the value is not a date we can parse."""
    text = value.strip()
    if not text:
        return ""
    if vr == "DT":
        # YYYYMMDDHHMMSS.FFFFFF&ZZXX: shift the date part, keep the time, drop the UTC offset (it hints at
        # the site's location).
        date_part, time_part = text[:8], re.split(r"[+-]", text[8:], maxsplit=1)[0]
    else:
        date_part, time_part = text, ""
    if len(date_part) != 8 or not date_part.isdigit():
        return None
    try:
        shifted = dt.date(int(date_part[:4]), int(date_part[4:6]), int(date_part[6:])) - shift
    except (ValueError, OverflowError):
        return None
    return shifted.strftime("%Y%m%d") + time_part
