"""De-identification: the PHI corpus end to end (DICOM → de-identified DICOM → NIfTI) and the profile's rules."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from deid_testing import (
    BIRTH_DATE,
    OTHER_SECRET,
    PATIENT_ID,
    PHI_ATTRIBUTES,
    SECRET,
    STUDY_DATE,
    BuiltSeries,
    build_series,
    file_bytes,
    iter_files,
    phi_found,
    write_series,
)
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode

from flip_imaging.deid import ACTIONS, Action, Deidentifier, DeidError
from flip_imaging.nifti import SIDECAR_KEYS, ConvertedSeries, convert_to_nifti


def _elements(ds: Dataset) -> Iterator[DataElement]:
    """Every element of the dataset, nested ones included, then the file meta."""
    yield from ds.iterall()
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta.iterall()


def _deidentify(series: BuiltSeries, src: Path, dst: Path, secret: bytes = SECRET) -> list[Path]:
    write_series(series, src)
    deid = Deidentifier(secret)
    return [deid.file(path, dst) for path in series.paths]


@dataclass
class Corpus:
    """The PHI corpus after de-identification and conversion; keyed by modality."""

    root: Path
    series: dict[str, BuiltSeries] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)
    nifti: dict[str, ConvertedSeries] = field(default_factory=dict)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """CT and MR series of the same patient (shared study), de-identified and converted once for the module."""
    result = Corpus(root=tmp_path_factory.mktemp("corpus"))
    deid = Deidentifier(SECRET)
    for series in (build_series("CT", series_no=1, slices=4), build_series("MR", series_no=2, slices=5)):
        m = series.modality
        dicom_dir = result.root / "out" / f"dicom_{m}"
        result.series[m] = series
        result.files[m] = _deidentify(series, result.root / "src" / m, dicom_dir)
        name = deid.pseudonym("series", series.series_uid)
        result.nifti[m] = convert_to_nifti(dicom_dir, result.root / "out" / "nifti", timeout_s=30, name=name)
    return result


def test_no_phi_in_any_element(corpus: Corpus) -> None:
    out = corpus.root
    dicoms = sorted((out / "out").rglob("*.dcm"))
    assert len(dicoms) == 9
    for path in dicoms:
        ds = pydicom.dcmread(path)
        for elem in _elements(ds):
            assert not phi_found(str(elem.value)), f"{elem.keyword or elem.tag}: {phi_found(str(elem.value))}"
            assert not elem.tag.is_private
            assert elem.tag.group >> 8 not in (0x50, 0x60), "curve or overlay survived"


def test_no_phi_in_any_output_byte_or_name(corpus: Corpus) -> None:
    out = corpus.root
    files = list(iter_files(out / "out"))
    assert {p.suffix for p in files} == {".dcm", ".gz", ".json"}
    for path in files:
        assert not phi_found(file_bytes(path)), f"{path.name}: {phi_found(file_bytes(path))}"
        assert not phi_found(str(path.relative_to(out)))


def test_the_corpus_really_contains_the_phi(corpus: Corpus) -> None:
    """Guard against a vacuous corpus test: the inputs carry every needle class the checks look for."""
    out = corpus.root
    found = set()
    for path in iter_files(out / "src"):
        found.update(phi_found(file_bytes(path)))
    assert {"Fakename", PATIENT_ID, BIRTH_DATE, STUDY_DATE, "Privatetagname", "Deepnested", "Overlay text"} <= found
    assert "METAAETITLEPHI" in found
    assert "Unlistedtext" in found
    assert "Curve label" in found


def test_sidecars_are_allowlisted(corpus: Corpus) -> None:
    for modality in ("CT", "MR"):
        sidecar = json.loads(corpus.nifti[modality].sidecar.path.read_text())
        assert set(sidecar) <= SIDECAR_KEYS
        assert sidecar["Modality"] == modality


def test_uids_are_consistent_within_and_across_series(corpus: Corpus) -> None:
    deid = Deidentifier(SECRET)
    study_uids, frame_uids = set(), set()
    for modality in ("CT", "MR"):
        series, paths = corpus.series[modality], corpus.files[modality]
        outs = [pydicom.dcmread(p) for p in paths]
        new_sops = [str(ds.SOPInstanceUID) for ds in outs]
        assert new_sops == [deid.uid(u) for u in series.sop_uids]
        assert len(set(new_sops)) == len(new_sops)
        assert [p.name for p in paths] == [f"{u}.dcm" for u in new_sops]
        assert {str(ds.SeriesInstanceUID) for ds in outs} == {deid.uid(series.series_uid)}
        for ds in outs:
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            # The reference to slice 0 follows slice 0's new UID.
            assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_sops[0]
            assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.SOPClassUID
            study_uids.add(str(ds.StudyInstanceUID))
            frame_uids.add(str(ds.FrameOfReferenceUID))
    # Same original study and frame of reference in both series → same pseudonyms.
    assert len(study_uids) == 1
    assert len(frame_uids) == 1
    for uid in study_uids | frame_uids:
        assert uid.startswith("2.25.")
        assert len(uid) <= 64
        assert UID(uid).is_valid


def test_uid_mapping_is_deterministic_and_secret_dependent(tmp_path: Path) -> None:
    series = build_series("MR", slices=3)
    first = _deidentify(series, tmp_path / "src", tmp_path / "a")
    again = _deidentify(series, tmp_path / "src", tmp_path / "b")
    other = _deidentify(series, tmp_path / "src", tmp_path / "c", secret=OTHER_SECRET)
    assert [p.name for p in first] == [p.name for p in again]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert not {p.name for p in first} & {p.name for p in other}
    a, c = pydicom.dcmread(first[0]), pydicom.dcmread(other[0])
    assert a.PatientID != c.PatientID
    assert a.AccessionNumber != c.AccessionNumber
    assert a.FrameOfReferenceUID != c.FrameOfReferenceUID
    assert a.StudyDate != c.StudyDate


def test_pixel_data_unchanged(corpus: Corpus) -> None:
    for modality in ("CT", "MR"):
        series, paths = corpus.series[modality], corpus.files[modality]
        for original, path in zip(series.datasets, paths, strict=True):
            assert pydicom.dcmread(path).PixelData == original.PixelData


def test_markers_pseudonyms_and_kept_characteristics(corpus: Corpus) -> None:
    deid = Deidentifier(SECRET)
    ds = pydicom.dcmread(corpus.files["CT"][0])
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert ds.DeidentificationMethod
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113105", "113107", "113108"}
    assert ds.PatientID == deid.pseudonym("patient", PATIENT_ID) == ds.PatientName
    assert ds.AccessionNumber == deid.pseudonym("accession", PHI_ATTRIBUTES["AccessionNumber"])
    assert len(ds.AccessionNumber) <= 16
    # Retain Patient Characteristics; birth date emptied; Type 2 attributes present but empty.
    assert (ds.PatientSex, ds.PatientAge, float(ds.PatientWeight)) == ("M", "061Y", 81.5)
    assert ds.PatientBirthDate == ""
    assert ds.ReferringPhysicianName == ""
    assert ds.StudyID == ""
    # Clean Descriptors: an all-technical protocol name stays, descriptions naming the patient go.
    assert ds.ProtocolName == "T1 AX"
    assert "SeriesDescription" not in ds
    assert "StudyDescription" not in ds
    # Equipment that names the device type (not the site) stays, for harmonisation.
    assert ds.Manufacturer == "GE MEDICAL SYSTEMS"
    assert ds.ConvolutionKernel == "STANDARD"


def test_dates_shift_by_one_per_patient_offset(corpus: Corpus) -> None:
    shift = dt.timedelta(days=Deidentifier(SECRET).date_shift_days(PATIENT_ID))
    original = dt.date(2023, 5, 17) - shift
    for modality in ("CT", "MR"):
        for path in corpus.files[modality]:
            ds = pydicom.dcmread(path)
            for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
                assert ds[keyword].value == original.strftime("%Y%m%d")
            # DateTime: date shifted, time of day kept, UTC offset dropped.
            assert str(ds.AcquisitionDateTime).startswith(original.strftime("%Y%m%d") + "0930")
            assert "+" not in str(ds.AcquisitionDateTime)
            # Unlisted dates shift too (interval to the study preserved).
            assert ds.DateOfLastCalibration == (dt.date(2023, 1, 1) - shift).strftime("%Y%m%d")
            assert ds.StudyTime == "093015"


def test_dataset_returns_a_copy(tmp_path: Path) -> None:
    original = build_series("CT", slices=1).datasets[0]
    before = original.PatientName
    out = Deidentifier(SECRET).dataset(original)
    assert original.PatientName == before
    assert out.PatientName != before
    assert "RequestAttributesSequence" in original
    assert "RequestAttributesSequence" not in out


def _as_received(path: Path) -> Dataset:
    """The instance as a C-GET hands it over: the data set decoded on its own, file meta from the context."""
    original = pydicom.dcmread(path)
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, original)
    ds = decode(io.BytesIO(encoded.getvalue()), False, True, False)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = original.file_meta.TransferSyntaxUID
    return ds


def test_a_received_instance_is_written_as_its_file_would_be_with_its_checksum(tmp_path: Path) -> None:
    series = build_series("CT", series_no=1, slices=3)
    write_series(series, tmp_path / "src")
    deid = Deidentifier(SECRET)
    from_files = {p.name: p.read_bytes() for p in (deid.file(path, tmp_path / "files") for path in series.paths)}
    for path in series.paths:
        written = deid.write(_as_received(path), tmp_path / "received", series_folders=True)
        assert written.series_uid == deid.uid(series.series_uid)
        assert written.path.parent == tmp_path / "received" / written.series_uid
        data = written.path.read_bytes()
        assert data == from_files[written.path.name]  # byte for byte what de-identifying the file gives
        assert (written.size, written.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert not phi_found(b"".join(p.read_bytes() for p in iter_files(tmp_path / "received")))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_uid_that_is_not_a_safe_file_name_is_refused(tmp_path: Path) -> None:
    # UIDs under the standard's own root are kept as they are, so they must still be checked before use.
    ds = build_series("CT", slices=1).datasets[0]
    ds.SOPInstanceUID = "1.2.840.10008.9/../../escaped"
    with pytest.raises(DeidError, match="malformed SOP Instance UID"):
        Deidentifier(SECRET).write(ds, tmp_path / "out")
    assert not list(tmp_path.rglob("*escaped*"))


def test_action_table_covers_the_profile_attributes() -> None:
    expected = {
        "PatientName": Action.DUMMY,
        "PatientID": Action.DUMMY,
        "AccessionNumber": Action.DUMMY,
        "PatientBirthDate": Action.ZERO,
        "PatientSex": Action.KEEP,
        "PatientAge": Action.KEEP,
        "OtherPatientIDsSequence": Action.REMOVE,
        "OtherPatientNames": Action.REMOVE,
        "PatientAddress": Action.REMOVE,
        "PatientTelephoneNumbers": Action.REMOVE,
        "InstitutionName": Action.REMOVE,
        "InstitutionAddress": Action.REMOVE,
        "InstitutionalDepartmentName": Action.REMOVE,
        "ReferringPhysicianName": Action.ZERO,
        "PerformingPhysicianName": Action.REMOVE,
        "NameOfPhysiciansReadingStudy": Action.REMOVE,
        "OperatorsName": Action.REMOVE,
        "StationName": Action.REMOVE,
        "DeviceSerialNumber": Action.REMOVE,
        "StudyDescription": Action.CLEAN,
        "SeriesDescription": Action.CLEAN,
        "ImageComments": Action.REMOVE,
        "StudyComments": Action.REMOVE,
        "AdditionalPatientHistory": Action.REMOVE,
        "RequestAttributesSequence": Action.REMOVE,
        "StudyDate": Action.CLEAN,
        "StudyInstanceUID": Action.UID,
        "SeriesInstanceUID": Action.UID,
        "SOPInstanceUID": Action.UID,
        "FrameOfReferenceUID": Action.UID,
        "ReferencedSOPInstanceUID": Action.UID,
    }
    for keyword, action in expected.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        assert ACTIONS[pydicom.tag.Tag(tag)] is action, keyword
    assert {a.value for a in Action} == {"D", "Z", "X", "K", "C", "U"}


@pytest.mark.parametrize(
    ("description", "kept"),
    [
        ("AX T1W POST C+", True),
        ("CT HEAD 5.0 MM", True),
        ("t2_tse_sag", True),
        ("Brain for Smith", False),
        ("T2 AX 1/2/23", False),
        ("T1 12345678", False),
        ("T1 john@example.org", False),
    ],
)
def test_clean_descriptors(description: str, kept: bool) -> None:
    ds = Dataset()
    ds.SeriesDescription = description
    out = Deidentifier(SECRET).dataset(ds)
    assert ("SeriesDescription" in out) is kept


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_corrupt_and_non_image_files_are_refused(tmp_path: Path) -> None:
    deid = Deidentifier(SECRET)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("Fakename Johnathan")
    with pytest.raises(DeidError, match="not a readable DICOM") as refused:
        deid.file(not_dicom, tmp_path / "out")
    assert str(tmp_path) not in str(refused.value)
    assert "notes" not in str(refused.value)
    with pytest.raises(DeidError):
        deid.file(garbage, tmp_path / "out")
    with pytest.raises(DeidError, match="not a readable DICOM"):
        deid.file(tmp_path / "missing.dcm", tmp_path / "out")

    ds = build_series("MR", slices=1).datasets[0]
    del ds.PixelData
    no_pixels = tmp_path / "no_pixels.dcm"
    ds.save_as(no_pixels, enforce_file_format=True)
    with pytest.raises(DeidError, match="no pixel data") as excinfo:
        deid.file(no_pixels, tmp_path / "out")
    assert not phi_found(str(excinfo.value))

    truncated = tmp_path / "truncated.dcm"
    build_series("CT", slices=1).datasets[0].save_as(truncated, enforce_file_format=True)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(DeidError, match=r"truncated|not a readable"):
        deid.file(truncated, tmp_path / "out")

    burned = build_series("MR", slices=1).datasets[0]
    burned.BurnedInAnnotation = "YES"
    burned_path = tmp_path / "burned.dcm"
    burned.save_as(burned_path, enforce_file_format=True)
    with pytest.raises(DeidError, match="burned-in"):
        deid.file(burned_path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_short_secret_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Deidentifier(b"short")
