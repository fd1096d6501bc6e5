"""The imaging studies of a synthetic dataset, for writing the matching synthetic DICOM studies.

:func:`image_occurrences` runs the same generator as the loader and returns, per ``image_occurrence``
row, what a DICOM writer needs: accession number, patient (hospital number, sex, birth date —
deliberately identifying, to exercise de-identification), modality, body part, date, study and
series UIDs, and whether and how large a lesion the images should show.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import numpy as np

from flip_omop.columns import GeneratedTable
from flip_omop.concepts import FEMALE, SITE_SPECS, SITES, Modality, Site
from flip_omop.generator import generate_blocks
from flip_omop.profiles import TrustProfile


@dataclass(frozen=True)
class ImagingStudy:
    """One synthetic imaging study: its ``image_occurrence`` row and what a DICOM writer needs with it."""

    accession_id: str
    image_occurrence_id: int
    person_id: int
    person_source_value: str
    """The hospital number (DICOM PatientID) — PHI the de-identification must remove."""
    sex: Literal["M", "F"]
    birth_date: date
    modality: Modality
    anatomic_site: Site
    body_part_examined: str
    study_date: date
    study_instance_uid: str
    series_instance_uid: str
    visit_occurrence_id: int
    procedure_occurrence_id: int
    lesion: bool
    """Whether the study shows a lesion (recorded through image_feature); the image should show it."""
    lesion_diameter_mm: float | None


def values(table: GeneratedTable, column: str) -> list[Any]:
    """One column of a generated table as Python values (what a SELECT would return)."""
    return table.column(column).python_values()


def _to_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def image_occurrences(profile: TrustProfile, persons: int, seed: int) -> Iterator[ImagingStudy]:
    """The imaging studies of the dataset ``(profile, persons, seed)``, without a database.

    Exactly the ``image_occurrence`` rows :func:`flip_omop.loader.load_synthetic` loads for the same
    arguments, with the patient details and the lesion a synthetic DICOM study should carry.
    """
    for block in generate_blocks(profile, persons, seed):
        occurrences, persons_table = block["image_occurrence"], block["person"]
        features = block["image_feature"]
        lesion_by_occurrence = dict(
            zip(values(features, "image_occurrence_id"), values(features, "image_feature_event_id"), strict=True)
        )
        diameters = _lesion_diameters(block["measurement"], set(lesion_by_occurrence.values()))
        first_person = values(persons_table, "person_id")[0] if persons_table.rows else 0
        sources = values(persons_table, "person_source_value")
        genders = values(persons_table, "gender_concept_id")
        births = values(persons_table, "birth_datetime")
        sites = {SITE_SPECS[s].concept_id: s for s in SITES}
        for row in zip(
            *(
                values(occurrences, c)
                for c in (
                    "image_occurrence_id",
                    "person_id",
                    "procedure_occurrence_id",
                    "visit_occurrence_id",
                    "anatomic_site_concept_id",
                    "image_occurrence_date",
                    "modality_source_value",
                    "image_study_uid",
                    "image_series_uid",
                    "accession_id",
                )
            ),
            strict=True,
        ):
            occurrence_id, person_id, procedure_id, visit_id, site_concept, day, modality, study, series, acc = row
            index = person_id - first_person
            site = sites[site_concept]
            lesion_measurement = lesion_by_occurrence.get(occurrence_id)
            yield ImagingStudy(
                accession_id=acc,
                image_occurrence_id=occurrence_id,
                person_id=person_id,
                person_source_value=sources[index],
                sex="F" if genders[index] == FEMALE else "M",
                birth_date=_to_date(births[index]),
                modality=modality,
                anatomic_site=site,
                body_part_examined=SITE_SPECS[site].body_part_examined,
                study_date=_to_date(day),
                study_instance_uid=study,
                series_instance_uid=series,
                visit_occurrence_id=visit_id,
                procedure_occurrence_id=procedure_id,
                lesion=lesion_measurement is not None,
                lesion_diameter_mm=None if lesion_measurement is None else diameters[lesion_measurement],
            )


def _lesion_diameters(measurements: GeneratedTable, wanted: set[int]) -> dict[int, float]:
    ids = measurements.column("measurement_id").values
    rows = np.flatnonzero(np.isin(ids, np.fromiter(wanted, dtype=np.int64, count=len(wanted))))
    values = measurements.column("value_as_number").values[rows]
    return {int(i): round(float(v), 1) for i, v in zip(ids[rows], values, strict=True)}
