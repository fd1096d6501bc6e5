"""Synthetic imaging: valid DICOM matching the OMOP studies, per-trust scanners, learnable content, PHI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from imaging_testing import dcm2niix, read_series
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from flip_imaging.synthetic import (
    CLINICAL_SIZES,
    MASK_FILE,
    SyntheticStudy,
    VolumeSize,
    phi_values,
    scanner_for,
    sop_instance_uid,
    study_phi,
    write_studies,
    write_study,
)
from flip_omop import ImagingStudy, get_profile, image_occurrences

# (profile, persons, seed, limit): small datasets that together hold CT and MR, with and without lesions.
DATASETS = (("south", 40, 1, 6), ("north", 40, 1, 3), ("east", 40, 2, 3))
Written = list[tuple[ImagingStudy, SyntheticStudy]]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """Every dataset of :data:`DATASETS` written once, each study paired with its OMOP row."""
    pairs: Written = []
    for name, persons, seed, limit in DATASETS:
        profile = get_profile(name)
        out = tmp_path_factory.mktemp(name)
        studies = write_studies(profile, persons, seed, out, limit=limit)
        omop = list(image_occurrences(profile, persons, seed))[:limit]
        pairs.extend(zip(omop, studies, strict=True))
    return pairs


def test_the_datasets_cover_both_modalities_with_and_without_lesions(written: Written) -> None:
    kinds = {(s.modality, s.lesion) for _, s in written}
    assert kinds == {("CT", True), ("CT", False), ("MR", True), ("MR", False)}


def test_every_instance_is_a_part10_file_in_explicit_vr_little_endian(written: Written) -> None:
    for omop, study in written:
        paths = study.instance_paths()
        assert sorted(p.name for p in study.folder.iterdir()) == sorted(p.name for p in paths)
        assert study.folder == study.mask.parent / omop.series_instance_uid
        for path in paths:
            raw = path.read_bytes()
            assert raw[128:132] == b"DICM"
            ds = pydicom.dcmread(path)  # no force: a file without a valid Part-10 header fails here
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            expected = CTImageStorage if omop.modality == "CT" else MRImageStorage
            assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == expected
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_tags_match_the_omop_imaging_study(written: Written) -> None:
    for omop, study in written:
        instances, _ = read_series(study)
        assert study.accession == omop.accession_id
        assert (study.study_uid, study.series_uid) == (omop.study_instance_uid, omop.series_instance_uid)
        assert study.lesion == omop.lesion
        sop_uids = [ds.SOPInstanceUID for ds in instances]
        assert sop_uids == [sop_instance_uid(omop.series_instance_uid, n) for n in range(1, len(instances) + 1)]
        assert len(set(sop_uids)) == len(sop_uids)
        assert all(UID(uid).is_valid for uid in sop_uids)
        for n, ds in enumerate(instances, start=1):
            assert ds.AccessionNumber == omop.accession_id
            assert ds.StudyInstanceUID == omop.study_instance_uid
            assert ds.SeriesInstanceUID == omop.series_instance_uid
            assert ds.Modality == omop.modality
            assert ds.PatientID == omop.person_source_value
            assert ds.PatientSex == omop.sex
            assert ds.PatientBirthDate == omop.birth_date.strftime("%Y%m%d")
            assert ds.StudyDate == omop.study_date.strftime("%Y%m%d")
            assert ds.BodyPartExamined == omop.body_part_examined
            assert ds.InstanceNumber == n
        assert len({ds.FrameOfReferenceUID for ds in instances}) == 1


def test_pixels_and_geometry_describe_one_contiguous_axial_volume(written: Written) -> None:
    for _, study in written:
        instances, volume = read_series(study)
        grid = study.phantom.grid
        assert volume.shape == grid.shape == (study.n_instances, 64, 64)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in instances])
        for ds in instances:
            assert ds.pixel_array.dtype == np.int16
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns) == (64, 64)
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert [float(v) for v in ds.PixelSpacing] == [grid.pixel_spacing_mm] * 2
            assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == grid.slice_spacing_mm
            assert float(ds.SliceLocation) == float(ds.ImagePositionPatient[2])
        # Same x/y for every slice; z steps by exactly the slice spacing along the normal (0, 0, 1).
        assert np.all(positions[:, :2] == positions[0, :2])
        assert np.allclose(np.diff(positions[:, 2]), grid.slice_spacing_mm)


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    profile = get_profile("south")
    first = write_studies(profile, 40, 1, tmp_path / "a", limit=4)
    second = write_studies(profile, 40, 1, tmp_path / "b", limit=4)

    def contents(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert [s.accession for s in first] == [s.accession for s in second]
    a, b = contents(tmp_path / "a"), contents(tmp_path / "b")
    assert len(a) == 4 * (24 + 1)
    assert a == b


def test_a_different_seed_moves_the_organ(tmp_path: Path) -> None:
    profile = get_profile("north")
    study = next(image_occurrences(profile, 40, 1))
    [same] = write_studies(profile, 40, 1, tmp_path / "a", limit=1)
    # The organ jitter is drawn per (profile, seed, accession); the OMOP row itself is the same.
    other = write_study(study, profile, 99, tmp_path / "b")
    assert same.phantom.organ_centre_mm != other.phantom.organ_centre_mm


def test_each_trust_has_its_own_scanner_and_intensity_scale(written: Written) -> None:
    tags: dict[str, tuple[str, str, float, float, float]] = {}
    organ_means: dict[tuple[str, str], float] = {}
    for omop, study in written:
        instances, volume = read_series(study)
        ds = instances[0]
        profile = omop.accession_id[:3]
        model = (ds.Manufacturer, ds.ManufacturerModelName, float(ds.RescaleSlope), float(ds.RescaleIntercept))
        key = f"{profile}/{omop.modality}"
        tags[key] = (*model, float(ds.PixelSpacing[0]))
        scanner = scanner_for({"NTH": "north", "STH": "south", "EST": "east"}[profile])
        assert ds.Manufacturer == scanner.manufacturer
        assert ds.ManufacturerModelName == scanner.model(omop.modality)
        organ = study.phantom.organ_mask() & ~study.phantom.lesion_mask()
        organ_means[(profile, omop.modality)] = float(volume[organ].mean())
    ct = [tags[k] for k in ("NTH/CT", "STH/CT", "EST/CT")]
    assert len({t[0] for t in ct}) == 3, "three vendors"
    assert len({(t[2], t[3]) for t in ct}) == 3, "three stored-value encodings"
    assert len({t[4] for t in ct}) == 3, "three pixel spacings"
    # MR units are arbitrary: the same organ reads several-fold differently at different trusts.
    mr = sorted(v for (_, modality), v in organ_means.items() if modality == "MR")
    assert mr[-1] > 2 * mr[0]
    assert scanner_for("west") == scanner_for("west") != scanner_for("north")


def test_the_mask_is_the_organ_on_the_series_grid(written: Written) -> None:
    for _, study in written:
        assert study.mask.name == MASK_FILE
        image = nib.load(study.mask)
        assert isinstance(image, nib.Nifti1Image)
        data = np.asarray(image.dataobj)
        assert data.dtype == np.uint8
        assert data.shape == (64, 64, study.n_instances)
        assert set(np.unique(data)) == {0, 1}
        assert np.allclose(image.affine, study.phantom.grid.nifti_affine())
        _, volume = read_series(study)
        organ = study.phantom.organ_mask()
        # The label is the bright blob: the same voxels, reordered the way dcm2niix orders them.
        assert np.array_equal(data.transpose(2, 1, 0)[:, ::-1, :], organ)
        body = volume > np.percentile(volume, 30)
        assert volume[organ].mean() > volume[body & ~organ].mean() + 40


def test_a_lesion_is_visible_exactly_when_omop_records_one(written: Written) -> None:
    for omop, study in written:
        _, volume = read_series(study)
        lesion = study.phantom.lesion_mask()
        organ = study.phantom.organ_mask() & ~lesion
        # Robust spread of the organ (noise plus MR coil bias), so that the check holds on every scanner.
        median = float(np.median(volume[organ]))
        spread = float(np.subtract(*np.percentile(volume[organ], [84, 16]))) / 2
        bright = volume[study.phantom.organ_mask()] > median + 6 * spread
        if omop.lesion:
            assert lesion.any()
            centre = study.phantom.lesion_voxel()
            assert centre is not None
            assert lesion[centre]
            # The centre voxel lies wholly inside the sphere; voxels at its rim only partly (partial volume).
            assert volume[centre] > median + 6 * spread, omop.accession_id
            assert volume[lesion].mean() > median + 4 * spread, omop.accession_id
            assert omop.lesion_diameter_mm is not None
            assert study.phantom.lesion_radius_mm == pytest.approx(omop.lesion_diameter_mm / 2)
        else:
            assert not lesion.any()
            assert study.phantom.lesion_voxel() is None
            assert bright.sum() <= 2, omop.accession_id


def test_every_phi_value_is_written_into_the_files(written: Written) -> None:
    for omop, study in written:
        phi = phi_values(omop)
        assert omop.person_source_value in phi
        assert omop.birth_date.strftime("%Y%m%d") in phi
        assert len(phi) >= 12
        for path in study.instance_paths()[:: study.n_instances - 1]:  # first and last instance
            raw = path.read_bytes()
            missing = {value for value in phi if value.encode("ascii") not in raw}
            assert not missing, f"{path}: {missing}"
        ds = pydicom.dcmread(study.instance_paths()[0])
        details = study_phi(omop)
        assert str(ds.PatientName) == details.patient_name
        assert ds.OtherPatientIDs == details.nhs_number
        assert ds.private_block(0x0009, "FLIP SYNTHETIC PHI")[0x01].value == details.patient_name_text
        assert omop.person_source_value in ds.ImageComments
        assert details.patient_name_text in ds.StudyDescription


def test_phi_is_deterministic_and_differs_between_patients() -> None:
    studies = list(image_occurrences(get_profile("east"), 200, 5))[:20]
    assert [phi_values(s) for s in studies] == [phi_values(s) for s in studies]
    assert len({study_phi(s).nhs_number for s in studies}) == len({s.person_id for s in studies})
    for s in studies:
        nhs = study_phi(s).nhs_number
        total = sum(int(d) * w for d, w in zip(nhs[:9], range(10, 1, -1), strict=True))
        assert len(nhs) == 10
        assert (11 - total % 11) % 11 == int(nhs[9])


@pytest.mark.parametrize(("profile", "modality"), [("north", "CT"), ("south", "MR"), ("east", "CT")])
def test_dcm2niix_converts_a_series_into_one_3d_nifti(
    written: Written, tmp_path: Path, profile: str, modality: str
) -> None:
    prefix = get_profile(profile).accession_prefix
    study = next(s for o, s in written if o.accession_id.startswith(prefix) and o.modality == modality)
    files = dcm2niix(study.folder, tmp_path)
    assert [f.name for f in files] == [f"{study.series_uid}.json", f"{study.series_uid}.nii.gz"]
    image = nib.load(files[1])
    assert isinstance(image, nib.Nifti1Image)
    assert image.shape == (64, 64, study.n_instances)
    mask_image = nib.load(study.mask)
    assert isinstance(mask_image, nib.Nifti1Image)
    # The label written alongside lies on exactly the voxels dcm2niix produced.
    assert np.allclose(image.affine, mask_image.affine, atol=1e-3)
    data = image.get_fdata()
    mask = np.asarray(mask_image.dataobj) > 0
    _, volume = read_series(study)
    assert data[mask].mean() == pytest.approx(volume[study.phantom.organ_mask()].mean(), rel=1e-3)


def test_limit_bounds_the_studies_written(tmp_path: Path) -> None:
    profile = get_profile("north")
    assert write_studies(profile, 40, 1, tmp_path, limit=0) == []
    assert [s.accession for s in write_studies(profile, 40, 1, tmp_path, limit=2)] == ["NTH00000001", "NTH00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NTH00000001", "NTH00000002"]
    with pytest.raises(ValueError, match="negative"):
        write_studies(profile, 40, 1, tmp_path, limit=-1)


@pytest.mark.parametrize("accession", ["../escape", "a/b", "", ".hidden"])
def test_an_accession_that_is_not_a_safe_folder_name_is_refused(tmp_path: Path, accession: str) -> None:
    profile = get_profile("north")
    study = dataclasses.replace(next(image_occurrences(profile, 40, 1)), accession_id=accession)
    with pytest.raises(ValueError, match="folder name"):
        write_study(study, profile, 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bigger_volume_samples_the_same_field_of_view_more_finely(tmp_path: Path) -> None:
    profile = get_profile("south")
    study = next(s for s in image_occurrences(profile, 40, 1) if s.modality == "CT" and s.lesion)
    size = VolumeSize(matrix=96, slices=36)
    small = write_study(study, profile, 1, tmp_path / "small")
    big = write_study(study, profile, 1, tmp_path / "big", size=size)
    grid, default = big.phantom.grid, small.phantom.grid
    assert grid.shape == (36, 96, 96)
    assert big.n_instances == 36
    assert grid.columns * grid.pixel_spacing_mm == pytest.approx(default.columns * default.pixel_spacing_mm, abs=0.01)
    assert grid.slices * grid.slice_spacing_mm == pytest.approx(default.slices * default.slice_spacing_mm, abs=0.01)
    # The same anatomy, only sampled more finely: organ and lesion where they were.
    assert big.phantom.organ_centre_mm == small.phantom.organ_centre_mm
    assert big.phantom.lesion_radius_mm == small.phantom.lesion_radius_mm
    instances, volume = read_series(big)
    assert volume.shape == grid.shape
    assert [float(v) for v in instances[0].PixelSpacing] == [grid.pixel_spacing_mm] * 2
    assert np.allclose(np.diff([float(ds.ImagePositionPatient[2]) for ds in instances]), grid.slice_spacing_mm)
    lesion = big.phantom.lesion_voxel()
    assert lesion is not None
    assert volume[lesion] > np.median(volume[big.phantom.organ_mask()])
    # dcm2niix puts it on the grid of the mask written alongside.
    files = dcm2niix(big.folder, tmp_path / "nifti")
    image, mask = nib.load(files[1]), nib.load(big.mask)
    assert isinstance(image, nib.Nifti1Image)
    assert isinstance(mask, nib.Nifti1Image)
    assert image.shape == mask.shape == (96, 96, 36)
    assert np.allclose(image.affine, mask.affine, atol=1e-3)


def test_clinical_sizes_are_what_a_pacs_holds() -> None:
    assert CLINICAL_SIZES["CT"] == VolumeSize(matrix=512, slices=160)
    assert CLINICAL_SIZES["MR"].matrix == 256
    for matrix, slices in ((4, 24), (64, 2), (2048, 24)):
        with pytest.raises(ValueError, match="matrix"):
            VolumeSize(matrix=matrix, slices=slices)
