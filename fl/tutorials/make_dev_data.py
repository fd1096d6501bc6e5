"""Write a local-dev dataset for the FLIP tutorials from the repository's synthetic generators.

    uv run python fl/tutorials/make_dev_data.py OUT_DIR --studies 12 --persons 200

writes what one trust would hand a trainer, so a tutorial runs with ``flip.local_dev`` before it
is uploaded::

    OUT_DIR/segmentation.csv      the rows the segmentation tutorial's cohort SQL returns
    OUT_DIR/classification.csv    ... the classification tutorial's (with the lesion label)
    OUT_DIR/tabular.csv           ... the tabular tutorial's (one row per person)
    OUT_DIR/images/<accession>/nifti/<accession>.nii.gz   (+ <accession>.json sidecar)
    OUT_DIR/images/<accession>/mask/mask.nii.gz

The OMOP rows come from :mod:`flip_omop` and the studies from :mod:`flip_imaging.synthetic` (the
small default grid), exactly as the demo's trusts get them. A real trust converts each DICOM
series with dcm2niix; here the series is read back with pydicom and written as NIfTI directly, on
the grid and in the orientation dcm2niix uses (the one the mask is written on), with the stored
values and rescale slope/intercept kept as dcm2niix keeps them. Half of the chosen studies show a
lesion where the dataset has enough of them, so the classification tutorial sees both classes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from flip_imaging.synthetic import SyntheticStudy, scanner_for, write_study
from flip_imaging.synthetic_phantom import to_nifti_order
from flip_omop import ImagingStudy, TrustProfile, generate_blocks, get_profile, image_occurrences

HBA1C = 3004410
BMI = 3038553
TYPE_2_DIABETES = 201826
IMAGING_COLUMNS = ("person_id", "accession_id", "modality_source_value")
TABULAR_COLUMNS = ("person_id", "year_of_birth", "gender_concept_id", "bmi", "hba1c", "t2dm")


def choose_studies(studies: Iterable[ImagingStudy], count: int) -> list[ImagingStudy]:
    """The first ``count`` studies, taking lesion and lesion-free studies in turn while both last."""
    with_lesion: list[ImagingStudy] = []
    without: list[ImagingStudy] = []
    for study in studies:
        (with_lesion if study.lesion else without).append(study)
    chosen: list[ImagingStudy] = []
    while len(chosen) < count and (with_lesion or without):
        for pool in (with_lesion, without):
            if pool and len(chosen) < count:
                chosen.append(pool.pop(0))
    return sorted(chosen, key=lambda s: s.image_occurrence_id)


def write_nifti(study: SyntheticStudy, target: Path) -> None:
    """The series as dcm2niix writes it: stored int16 values, scl_slope/scl_inter, RAS affine, sidecar."""
    instances = [pydicom.dcmread(path) for path in study.instance_paths()]
    stored = np.stack([ds.pixel_array for ds in instances]).astype(np.int16)  # [slice, row, column]
    first = instances[0]
    affine = study.phantom.grid.nifti_affine()
    nifti_image: Any = nib.Nifti1Image  # nibabel is not annotated
    image = nifti_image(to_nifti_order(stored), affine)
    image.header.set_slope_inter(float(first.RescaleSlope), float(first.RescaleIntercept))
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))
    sidecar = {
        "Modality": study.modality,
        "Manufacturer": str(first.Manufacturer),
        "BodyPartExamined": str(first.BodyPartExamined),
        "SliceThickness": float(first.SliceThickness),
        "ConversionSoftware": "flip make_dev_data (dcm2niix layout)",
    }
    target.with_name(target.name.removesuffix(".nii.gz") + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")


def write_images(studies: Sequence[ImagingStudy], profile: TrustProfile, seed: int, images: Path) -> None:
    """Each study's NIfTI volume and organ mask under ``images/<accession>/{nifti,mask}/``."""
    with tempfile.TemporaryDirectory(prefix="flip-dicom-") as scratch:
        for study in studies:
            written = write_study(study, profile, seed, Path(scratch))
            folder = images / study.accession_id
            write_nifti(written, folder / "nifti" / f"{study.accession_id}.nii.gz")
            (folder / "mask").mkdir(parents=True, exist_ok=True)
            (folder / "mask" / "mask.nii.gz").write_bytes(written.mask.read_bytes())


def tabular_rows(profile: TrustProfile, persons: int, seed: int) -> list[dict[str, Any]]:
    """Per person: year of birth, sex, mean BMI and HbA1c (None when never measured), type 2 diabetes 0/1.

    The same rows the tabular tutorial's cohort SQL returns, computed from the generator's tables.
    """
    rows: list[dict[str, Any]] = []
    for block in generate_blocks(profile, persons, seed):
        person = block["person"]
        ids = person.column("person_id").values
        sums = {concept: dict.fromkeys(ids.tolist(), Decimal(0)) for concept in (BMI, HBA1C)}
        counts = {concept: dict.fromkeys(ids.tolist(), 0) for concept in (BMI, HBA1C)}
        measurement = block["measurement"]
        for pid, concept, value in zip(
            measurement.column("person_id").values.tolist(),
            measurement.column("measurement_concept_id").values.tolist(),
            measurement.column("value_as_number").python_values(),
            strict=True,
        ):
            if concept in sums and value is not None:
                sums[concept][pid] += value
                counts[concept][pid] += 1
        conditions = block["condition_occurrence"]
        concepts = conditions.column("condition_concept_id").values
        diabetic = set(conditions.column("person_id").values[concepts == TYPE_2_DIABETES].tolist())

        for pid, year, gender in zip(
            ids.tolist(),
            person.column("year_of_birth").values.tolist(),
            person.column("gender_concept_id").values.tolist(),
            strict=True,
        ):
            rows.append(
                {
                    "person_id": pid,
                    "year_of_birth": year,
                    "gender_concept_id": gender,
                    "bmi": _mean(sums[BMI][pid], counts[BMI][pid]),
                    "hba1c": _mean(sums[HBA1C][pid], counts[HBA1C][pid]),
                    "t2dm": int(pid in diabetic),
                }
            )
    return rows


def _mean(total: Decimal, count: int) -> float | None:
    """AVG as PostgreSQL computes it (NULL over no rows), to four decimals for the CSV."""
    return round(float(total / count), 4) if count else None


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def make_dev_data(out: Path, *, studies: int, persons: int, profile_name: str, seed: int) -> dict[str, Any]:
    """Write the whole local-dev dataset under ``out``; returns what was written (counts)."""
    profile = get_profile(profile_name)
    out.mkdir(parents=True, exist_ok=True)
    chosen = choose_studies(image_occurrences(profile, persons, seed), studies)
    write_images(chosen, profile, seed, out / "images")
    imaging = [
        {
            "person_id": s.person_id,
            "accession_id": s.accession_id,
            "modality_source_value": s.modality,
            "lesion": int(s.lesion),
        }
        for s in chosen
    ]
    write_csv(out / "segmentation.csv", IMAGING_COLUMNS, imaging)
    write_csv(out / "classification.csv", (*IMAGING_COLUMNS, "lesion"), imaging)
    tabular = tabular_rows(profile, persons, seed)
    write_csv(out / "tabular.csv", TABULAR_COLUMNS, tabular)
    return {
        "profile": profile.name,
        "scanner": scanner_for(profile).manufacturer,
        "studies": len(chosen),
        "lesions": sum(s.lesion for s in chosen),
        "persons": len(tabular),
        "t2dm": sum(r["t2dm"] for r in tabular),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--studies", type=int, default=12, help="imaging studies to write (default 12)")
    parser.add_argument("--persons", type=int, default=200, help="synthetic persons in the OMOP data (default 200)")
    parser.add_argument("--profile", default="north", help="trust profile: north, south or east (default north)")
    parser.add_argument("--seed", type=int, default=7, help="dataset seed (default 7)")
    args = parser.parse_args(argv)
    if args.studies < 1:
        parser.error("--studies must be at least 1")
    started = time.perf_counter()
    summary = make_dev_data(
        args.out_dir, studies=args.studies, persons=args.persons, profile_name=args.profile, seed=args.seed
    )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
