"""Deterministic, vectorised synthetic OMOP data for one trust.

``generate_blocks(profile, persons, seed)`` yields the rows of every table, a block of persons at a
time, as numpy columns.  Each block draws from its own random stream, seeded from ``(seed, profile
name, block number)``, so the same ``(profile, persons, seed)`` always gives byte-identical data
(with the same numpy version) without ever holding more than one block in memory.

Every fact is tied to one of the person's visits and takes that visit's date, so dates always lie
inside the person's observation period.  Imaging studies get their own outpatient visit, a CT or MR
``procedure_occurrence``, an ``image_occurrence`` with a unique accession id and DICOM UIDs, and,
when the study shows a lesion, a lesion-size ``measurement`` linked through ``image_feature`` —
the same rows :func:`flip_omop.imaging.image_occurrences` hands to the code that writes the matching DICOM studies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from flip_omop.columns import (
    GENERATED_TABLES,
    BoolArray,
    Column,
    DateArray,
    FloatArray,
    GeneratedTable,
    IntArray,
    Table,
)
from flip_omop.concepts import (
    CONDITION_INDEX,
    CONDITIONS,
    DRUG_INDEX,
    DRUGS,
    FEMALE,
    FIELD_MEASUREMENT_ID,
    INPATIENT_VISIT,
    LESION_DIAMETER,
    MALE,
    MEASUREMENT_INDEX,
    MEASUREMENTS,
    MODALITIES,
    MODALITY_CONCEPTS,
    OUTPATIENT_VISIT,
    PROCEDURE_INDEX,
    PROCEDURES,
    SITE_SPECS,
    SITES,
    SMOKING_STATUS,
    SMOKING_VALUES,
    TYPE_EHR,
    TYPE_EHR_PRESCRIPTION,
    UNITS,
)
from flip_omop.profiles import AGE_BANDS, TrustProfile

EXTRACT_DATE = np.datetime64("2024-12-31", "D")
"""The day the synthetic extract was taken: ages are computed at it, open observation periods end on it."""
RECORDS_START = np.datetime64("2005-01-01", "D")
"""No electronic record starts before this day."""
BLOCK_PERSONS = 50_000
"""Persons per block.  Part of the data's definition: changing it changes every dataset."""
UID_ROOT = "2.25.325419255099138385245477696949504254106"
"""DICOM UID root of FLIP's synthetic studies: a UUID-derived OID (PS3.5 B.2) that FLIP owns."""
MAX_UID_LENGTH = 64
"""DICOM's UID limit (PS3.5 9.1); the root leaves room for the dataset tag and 10-digit study ids."""


def _int(values: npt.ArrayLike, name: str, nulls: BoolArray | None = None) -> Column:
    return Column(name, "int4", np.asarray(values, dtype=np.int64), nulls)


def _date(values: DateArray, name: str, nulls: BoolArray | None = None) -> Column:
    return Column(name, "date", values, nulls)


def _vocab(codes: npt.ArrayLike, vocabulary: Sequence[str], name: str) -> Column:
    return Column(name, "vocabulary", np.asarray(codes, dtype=np.int64), vocabulary=tuple(vocabulary))


def _digits(values: IntArray, width: int) -> npt.NDArray[np.bytes_]:
    if values.size == 0:  # numpy's zfill cannot reduce an empty array (a tiny dataset with no imaging)
        return np.asarray([], dtype=f"S{width}")
    return np.asarray(np.strings.zfill(values.astype(np.bytes_), width), dtype=np.bytes_)


def _profile_key(profile: TrustProfile) -> int:
    return int.from_bytes(hashlib.blake2b(profile.name.encode(), digest_size=4).digest(), "big")


def dataset_tag(profile: TrustProfile, persons: int, seed: int) -> int:
    """A 1..99999 number naming one dataset inside :data:`UID_ROOT` so datasets do not share UIDs."""
    digest = hashlib.blake2b(f"{profile.name}|{persons}|{seed}".encode(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "big") % 99_999


@dataclass
class _Ids:
    """Next free id per table; ids run on across blocks."""

    next: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GENERATED_TABLES, 1))

    def take(self, table: str, count: int) -> IntArray:
        first = self.next[table]
        self.next[table] = first + count
        if first + count - 1 > np.iinfo(np.int32).max:
            raise ValueError(f"too many {table} rows for OMOP's integer ids")
        return np.arange(first, first + count, dtype=np.int64)


@dataclass(frozen=True)
class _Persons:
    """Per-person state of one block that later tables depend on."""

    person_id: IntArray
    female: BoolArray
    age: FloatArray
    birth: DateArray
    start: DateArray
    end: DateArray
    smoking: IntArray  # 0 current, 1 ex, 2 never
    conditions: BoolArray  # persons x CONDITIONS

    def has(self, key: str) -> BoolArray:
        return self.conditions[:, CONDITION_INDEX[key]]


@dataclass(frozen=True)
class _Visits:
    person: IntArray  # index into the block's persons, sorted
    visit_id: IntArray
    start: DateArray
    imaging: BoolArray
    regular_positions: IntArray  # positions of the ordinary visits, grouped by person
    regular_first: IntArray  # per person: where its ordinary visits start in regular_positions
    regular_count: IntArray


@dataclass(frozen=True)
class _Imaging:
    """One row per imaging study of the block, in image_occurrence order."""

    person: IntArray
    visit_position: IntArray
    modality: IntArray  # index into MODALITIES
    site: IntArray  # index into SITES
    lesion: BoolArray
    diameter: FloatArray


class _BlockGenerator:
    """Draws every table for one block of persons from one random stream."""

    def __init__(self, profile: TrustProfile, seed: int, block: int, first_person: int, count: int, ids: _Ids):
        entropy = np.random.SeedSequence(entropy=seed, spawn_key=(_profile_key(profile), block))
        self.rng = np.random.Generator(np.random.PCG64(entropy))
        self.profile = profile
        self.first_person = first_person
        self.count = count
        self.ids = ids

    # -- helpers --------------------------------------------------------------------------------

    def _choice(self, weights: Sequence[float], size: int) -> IntArray:
        return self.rng.choice(len(weights), size=size, p=np.asarray(weights, dtype=np.float64)).astype(np.int64)

    def _uniform_day(self, start: DateArray, end: DateArray) -> DateArray:
        span = (end - start).astype(np.int64) + 1
        offset = np.floor(self.rng.random(len(start)) * span).astype(np.int64)
        days: DateArray = start + offset.astype("timedelta64[D]")
        return days

    def _repeat(self, counts: IntArray) -> IntArray:
        repeated: IntArray = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        return repeated

    def _pick_visit(self, visits: _Visits, person: IntArray) -> IntArray:
        """A random ordinary visit of each listed person (position in the visit arrays)."""
        slot = np.floor(self.rng.random(len(person)) * visits.regular_count[person]).astype(np.int64)
        positions: IntArray = visits.regular_positions[visits.regular_first[person] + slot]
        return positions

    # -- persons --------------------------------------------------------------------------------

    def persons(self) -> tuple[_Persons, list[GeneratedTable]]:
        p, n, rng = self.profile, self.count, self.rng
        person_id = np.arange(self.first_person, self.first_person + n, dtype=np.int64)
        female = rng.random(n) < p.female_fraction
        band = self._choice(p.age_band_weights, n)
        lows = np.array([b[0] for b in AGE_BANDS], dtype=np.float64)[band]
        highs = np.array([b[1] for b in AGE_BANDS], dtype=np.float64)[band]
        age = lows + rng.random(n) * (highs - lows)
        birth = EXTRACT_DATE - np.floor(age * 365.25).astype("timedelta64[D]")
        race_ids = np.array(list(p.race_mix), dtype=np.int64)
        race = race_ids[self._choice(list(p.race_mix.values()), n)]

        # Registration with the trust: any time in the record's first 80 %, never before birth.
        record_days = (EXTRACT_DATE - RECORDS_START).astype(np.int64)
        registered = RECORDS_START + np.floor(rng.random(n) * record_days * 0.8).astype("timedelta64[D]")
        start = np.maximum(birth, registered)
        # Deaths concentrate in the old: the hazard doubles about every eight years of age.
        hazard = np.exp((age - 60.0) / 12.0)
        died = (rng.random(n) < np.minimum(p.death_rate * hazard / hazard.mean(), 0.9)) & (
            (EXTRACT_DATE - start).astype(np.int64) > 30
        )
        death_day = self._uniform_day(start + np.timedelta64(1, "D"), np.full(n, EXTRACT_DATE))
        end = np.where(died, death_day, EXTRACT_DATE)

        smoking = self._choice(p.smoking_mix, n)
        smoking = np.where(age < 16, 2, smoking)  # children never smoke here
        conditions = self._conditions(age, smoking)

        persons = _Persons(person_id, female, age, birth, start, end, smoking, conditions)
        gender_values = {"letter": ("M", "F"), "nhs": ("1", "2"), "word": ("male", "female")}[p.gender_coding]
        hospital_number = np.strings.add(f"{p.accession_prefix}-".encode(), _digits(person_id, 9))
        birth_days = birth.astype("datetime64[D]")
        years = birth_days.astype("datetime64[Y]")
        months = birth_days.astype("datetime64[M]")
        person = GeneratedTable(
            "person",
            (
                _int(person_id, "person_id"),
                _int(np.where(female, FEMALE, MALE), "gender_concept_id"),
                _int(years.astype(np.int64) + 1970, "year_of_birth"),
                _int(months.astype(np.int64) % 12 + 1, "month_of_birth"),
                _int((birth_days - months).astype(np.int64) + 1, "day_of_birth"),
                Column("birth_datetime", "timestamp", birth_days),
                _int(race, "race_concept_id"),
                _int(np.zeros(n, dtype=np.int64), "ethnicity_concept_id"),
                Column("person_source_value", "text", hospital_number),
                _vocab(female.astype(np.int64), gender_values, "gender_source_value"),
            ),
        )
        period = GeneratedTable(
            "observation_period",
            (
                _int(self.ids.take("observation_period", n), "observation_period_id"),
                _int(person_id, "person_id"),
                _date(start, "observation_period_start_date"),
                _date(end, "observation_period_end_date"),
                _int(np.full(n, TYPE_EHR), "period_type_concept_id"),
            ),
        )
        dead = np.flatnonzero(died)
        death = GeneratedTable(
            "death",
            (
                _int(person_id[dead], "person_id"),
                _date(end[dead], "death_date"),
                _int(np.full(len(dead), TYPE_EHR), "death_type_concept_id"),
            ),
        )
        return persons, [person, period, death]

    def _conditions(self, age: FloatArray, smoking: IntArray) -> BoolArray:
        p, n = self.profile, len(age)
        has = np.zeros((n, len(CONDITIONS)), dtype=bool)
        smoker_risk = np.array([2.5, 1.5, 0.4])[smoking]
        # Comorbidity: a condition is likelier when its risk factor (drawn earlier) is present.
        risk_factors = {
            "t2dm": ("obesity", 2.0),
            "hypertension": ("obesity", 1.5),
            "mi": ("hypertension", 1.8),
            "heart_failure": ("mi", 3.0),
            "ckd": ("t2dm", 2.0),
        }
        child = age < 18
        for j, spec in enumerate(CONDITIONS):
            probability = p.condition_prevalence.get(spec.key, 0.0) * np.exp(spec.age_slope * (age - 50.0) / 10.0)
            if spec.key in ("copd", "lung_cancer"):
                probability = probability * smoker_risk
            if spec.key in risk_factors:
                factor_key, factor = risk_factors[spec.key]
                probability = probability * np.where(has[:, CONDITION_INDEX[factor_key]], factor, 1.0)
            if spec.key not in ("asthma", "obesity", "depression"):
                probability = np.where(child, probability * 0.1, probability)
            has[:, j] = self.rng.random(n) < np.minimum(probability, 0.9)
        return has

    # -- visits ---------------------------------------------------------------------------------

    def visits(self, persons: _Persons) -> tuple[_Visits, GeneratedTable]:
        p, rng = self.profile, self.rng
        regular = 1 + rng.poisson(p.extra_visits * (0.6 + 0.8 * persons.age / 100.0)).astype(np.int64)
        # Older and lung-disease patients are imaged more often.
        weight = 0.5 + persons.age / 100.0 + 0.5 * (persons.has("lung_cancer") | persons.has("copd"))
        imaging = np.minimum(rng.poisson(p.imaging_rate * weight / weight.mean()), 3).astype(np.int64)
        total = regular + imaging
        person = self._repeat(total)
        first = np.cumsum(total) - total
        is_imaging = (np.arange(len(person)) - first[person]) >= regular[person]
        start = self._uniform_day(persons.start[person], persons.end[person])
        concept_ids = np.array(list(p.visit_mix), dtype=np.int64)
        kind = self._choice(list(p.visit_mix.values()), len(person))
        kind = np.where(is_imaging, int(np.flatnonzero(concept_ids == OUTPATIENT_VISIT)[0]), kind)
        order = np.lexsort((is_imaging, start, person))
        person, start, is_imaging, kind = person[order], start[order], is_imaging[order], kind[order]

        concept = concept_ids[kind]
        stay = np.where(concept == INPATIENT_VISIT, rng.geometric(0.3, len(person)), 0).astype("timedelta64[D]")
        end = np.minimum(start + stay, persons.end[person])
        visit_id = self.ids.take("visit_occurrence", len(person))
        same_person = np.concatenate(([False], person[1:] == person[:-1]))
        preceding = np.where(same_person, visit_id - 1, 0)
        regular_positions = np.flatnonzero(~is_imaging)
        table = GeneratedTable(
            "visit_occurrence",
            (
                _int(visit_id, "visit_occurrence_id"),
                _int(persons.person_id[person], "person_id"),
                _int(concept, "visit_concept_id"),
                _date(start, "visit_start_date"),
                _date(end, "visit_end_date"),
                _int(np.full(len(person), TYPE_EHR), "visit_type_concept_id"),
                _int(preceding, "preceding_visit_occurrence_id", nulls=~same_person),
                _vocab(kind, [p.visit_source_values[int(c)] for c in concept_ids], "visit_source_value"),
            ),
        )
        visits = _Visits(person, visit_id, start, is_imaging, regular_positions, np.cumsum(regular) - regular, regular)
        return visits, table

    # -- clinical facts -------------------------------------------------------------------------

    def condition_occurrence(self, persons: _Persons, visits: _Visits) -> GeneratedTable:
        p = self.profile
        person, condition = np.nonzero(persons.conditions)
        person, condition = person.astype(np.int64), condition.astype(np.int64)
        # Chronic conditions are often coded again at a later visit (an acute MI is not).
        repeat = (self.rng.random(len(person)) < 0.35) & (condition != CONDITION_INDEX["mi"])
        person, condition = np.concatenate((person, person[repeat])), np.concatenate((condition, condition[repeat]))
        visit = self._pick_visit(visits, person)
        order = np.lexsort((condition, visits.start[visit], person))
        person, condition, visit = person[order], condition[order], visit[order]
        codes = {
            "icd10": [c.icd10 for c in CONDITIONS],
            "icd10_compact": [c.icd10.replace(".", "") for c in CONDITIONS],
            "snomed": [c.snomed for c in CONDITIONS],
        }[p.condition_coding]
        concept_ids = np.array([c.concept_id for c in CONDITIONS], dtype=np.int64)
        return GeneratedTable(
            "condition_occurrence",
            (
                _int(self.ids.take("condition_occurrence", len(person)), "condition_occurrence_id"),
                _int(persons.person_id[person], "person_id"),
                _int(concept_ids[condition], "condition_concept_id"),
                _date(visits.start[visit], "condition_start_date"),
                _int(np.full(len(person), p.condition_type_concept_id), "condition_type_concept_id"),
                _int(visits.visit_id[visit], "visit_occurrence_id"),
                _vocab(condition, codes, "condition_source_value"),
            ),
        )

    def _measurement_values(self, key: str, persons: _Persons, person: IntArray) -> FloatArray:
        """Values in SI units, shifted by the conditions that drive them."""
        rng, size = self.rng, len(person)
        age, male = persons.age[person], ~persons.female[person]

        def has(condition: str) -> BoolArray:
            return persons.has(condition)[person]

        normal = rng.standard_normal(size)
        if key == "bmi":
            adult = self.profile.bmi_mean + 4.0 * has("obesity") + normal * 4.0
            return np.clip(np.where(age < 18, 17.0 + 0.2 * age + normal * 2.5, adult), 12.0, 70.0)
        if key == "sbp":
            return np.clip(118.0 + 0.4 * (age - 40.0) + 16.0 * has("hypertension") + normal * 12.0, 80.0, 230.0)
        if key == "dbp":
            return np.clip(76.0 + 0.1 * (age - 40.0) + 8.0 * has("hypertension") + normal * 8.0, 40.0, 140.0)
        if key == "weight":
            adult = 66.0 + 12.0 * male + 10.0 * has("obesity") + normal * 12.0
            return np.clip(np.where(age < 18, (4.0 + 3.2 * age) * (1.0 + 0.15 * normal), adult), 2.5, 250.0)
        if key == "hba1c":
            return np.clip(np.where(has("t2dm"), 58.0 + normal * 12.0, 36.0 + normal * 3.5), 20.0, 150.0)
        if key == "creatinine":
            healthy = 72.0 + 14.0 * male + normal * 13.0
            return np.clip(np.where(has("ckd"), 170.0 + normal * 60.0, healthy), 30.0, 1200.0)
        if key == "cholesterol":
            return np.clip(np.where(has("hyperlipidemia"), 6.4 + normal, 4.9 + normal * 0.8), 2.0, 15.0)
        raise KeyError(key)

    def measurement(self, persons: _Persons, visits: _Visits, imaging: _Imaging) -> tuple[GeneratedTable, IntArray]:
        """The measurement table and, per lesion of ``imaging``, the id of its lesion-size row."""
        p, rng = self.profile, self.rng
        rates: dict[str, FloatArray] = {
            "bmi": np.full(self.count, 0.7),
            "sbp": 0.75 + 0.5 * persons.has("hypertension"),
            "weight": np.full(self.count, 0.3),
            "hba1c": 0.2 + 1.4 * persons.has("t2dm"),
            "creatinine": 0.25 + 1.0 * persons.has("ckd"),
            "cholesterol": 0.25 + 0.6 * persons.has("hyperlipidemia"),
        }
        parts_person: list[IntArray] = []
        parts_visit: list[IntArray] = []
        parts_kind: list[IntArray] = []
        parts_value: list[FloatArray] = []
        for key, rate in rates.items():
            person = self._repeat(rng.poisson(rate).astype(np.int64))
            visit = self._pick_visit(visits, person)
            keys = ["sbp", "dbp"] if key == "sbp" else [key]  # blood pressure comes as a pair
            for k in keys:
                parts_person.append(person)
                parts_visit.append(visit)
                parts_kind.append(np.full(len(person), MEASUREMENT_INDEX[k], dtype=np.int64))
                parts_value.append(self._measurement_values(k, persons, person))
        lesions = np.flatnonzero(imaging.lesion)
        parts_person.append(imaging.person[lesions])
        parts_visit.append(imaging.visit_position[lesions])
        parts_kind.append(np.full(len(lesions), len(MEASUREMENTS), dtype=np.int64))  # lesion size
        parts_value.append(imaging.diameter[lesions])
        source = np.concatenate([np.full(len(v), -1, dtype=np.int64) for v in parts_value[:-1]] + [lesions])

        person, visit = np.concatenate(parts_person), np.concatenate(parts_visit)
        kind, si_value = np.concatenate(parts_kind), np.concatenate(parts_value)
        order = np.lexsort((kind, visits.start[visit], person))
        person, visit, kind, si_value, source = person[order], visit[order], kind[order], si_value[order], source[order]
        measurement_id = self.ids.take("measurement", len(person))
        lesion_ids = np.empty(len(imaging.person), dtype=np.int64)
        lesion_ids[source[source >= 0]] = measurement_id[source >= 0]

        conventional = p.lab_units == "conventional"
        specs = list(MEASUREMENTS)
        units = [UNITS[m.conventional_unit if conventional else m.si_unit] for m in specs] + [UNITS["mm"]]
        factor = np.array([m.to_conventional[0] if conventional else 1.0 for m in specs] + [1.0])
        offset = np.array([m.to_conventional[1] if conventional else 0.0 for m in specs] + [0.0])
        scale = np.array([m.conventional_scale if conventional else m.si_scale for m in specs] + [1], dtype=np.int64)
        types = np.array([m.type_concept_id for m in specs] + [TYPE_EHR], dtype=np.int64)
        concepts = np.array([m.concept_id for m in specs] + [LESION_DIAMETER], dtype=np.int64)
        codes = [m.loinc if p.measurement_coding == "loinc" else m.local_code for m in specs] + ["LESION-MM"]
        unit_codes = sorted({u.code for u in units})
        unit_index = np.array([unit_codes.index(u.code) for u in units], dtype=np.int64)
        return (
            GeneratedTable(
                "measurement",
                (
                    _int(measurement_id, "measurement_id"),
                    _int(persons.person_id[person], "person_id"),
                    _int(concepts[kind], "measurement_concept_id"),
                    _date(visits.start[visit], "measurement_date"),
                    _int(types[kind], "measurement_type_concept_id"),
                    Column("value_as_number", "numeric", si_value * factor[kind] + offset[kind], scale=scale[kind]),
                    _int(np.array([u.concept_id for u in units], dtype=np.int64)[kind], "unit_concept_id"),
                    _int(visits.visit_id[visit], "visit_occurrence_id"),
                    _vocab(kind, codes, "measurement_source_value"),
                    _vocab(unit_index[kind], unit_codes, "unit_source_value"),
                ),
            ),
            lesion_ids,
        )

    def drug_exposure(self, persons: _Persons, visits: _Visits) -> GeneratedTable:
        p, rng = self.profile, self.rng
        # (drug, who is eligible, probability of being prescribed it)
        indications: list[tuple[str, BoolArray, float]] = [
            ("metformin", persons.has("t2dm"), 0.8),
            (p.antihypertensive, persons.has("hypertension"), 0.75),
            (p.statin, persons.has("hyperlipidemia") | persons.has("mi"), 0.7),
            ("salbutamol", persons.has("asthma") | persons.has("copd"), 0.8),
            ("aspirin", persons.has("mi"), 0.7),
            ("apixaban", persons.has("atrial_fibrillation"), 0.7),
            ("sertraline", persons.has("depression"), 0.5),
        ]
        parts_person: list[IntArray] = []
        parts_drug: list[IntArray] = []
        for key, eligible, probability in indications:
            treated = eligible & (rng.random(self.count) < probability)
            courses = np.where(treated, 1 + rng.poisson(0.5, self.count), 0).astype(np.int64)
            parts_person.append(self._repeat(courses))
            parts_drug.append(np.full(int(courses.sum()), DRUG_INDEX[key], dtype=np.int64))
        for key, rate in (("paracetamol", 0.3), ("omeprazole", 0.15)):
            person = self._repeat(rng.poisson(rate, self.count).astype(np.int64))
            parts_person.append(person)
            parts_drug.append(np.full(len(person), DRUG_INDEX[key], dtype=np.int64))
        person, drug = np.concatenate(parts_person), np.concatenate(parts_drug)
        visit = self._pick_visit(visits, person)
        order = np.lexsort((drug, visits.start[visit], person))
        person, drug, visit = person[order], drug[order], visit[order]
        start = visits.start[visit]
        short_course = (drug == DRUG_INDEX["paracetamol"]) | (drug == DRUG_INDEX["omeprazole"])
        days = np.where(short_course, 14, p.days_supply).astype(np.int64)
        end = np.minimum(start + (days - 1).astype("timedelta64[D]"), persons.end[person])
        names = [d.product if p.drug_coding == "product" else d.name.upper() for d in DRUGS]
        return GeneratedTable(
            "drug_exposure",
            (
                _int(self.ids.take("drug_exposure", len(person)), "drug_exposure_id"),
                _int(persons.person_id[person], "person_id"),
                _int(np.array([d.concept_id for d in DRUGS], dtype=np.int64)[drug], "drug_concept_id"),
                _date(start, "drug_exposure_start_date"),
                _date(end, "drug_exposure_end_date"),
                _int(np.full(len(person), TYPE_EHR_PRESCRIPTION), "drug_type_concept_id"),
                Column("quantity", "numeric", days.astype(np.float64), scale=0),
                _int(days, "days_supply"),
                _int(visits.visit_id[visit], "visit_occurrence_id"),
                _vocab(drug, names, "drug_source_value"),
            ),
        )

    def imaging(self, persons: _Persons, visits: _Visits) -> _Imaging:
        p, rng = self.profile, self.rng
        visit_position = np.flatnonzero(visits.imaging)
        person = visits.person[visit_position]
        size = len(person)
        is_ct = rng.random(size) < p.ct_fraction
        ct_site = self._choice([p.ct_sites[s] for s in SITES], size)
        mr_site = self._choice([p.mr_sites[s] for s in SITES], size)
        site = np.where(is_ct, ct_site, mr_site)
        modality = np.where(is_ct, MODALITIES.index("CT"), MODALITIES.index("MR")).astype(np.int64)

        def has(condition: str) -> BoolArray:
            return persons.has(condition)[person]

        chest, abdomen, head = (site == SITES.index(s) for s in ("chest", "abdomen", "head"))
        base = np.array([p.finding_rate[s] for s in SITES])[site]
        boost = np.ones(size)
        boost *= np.where(chest & has("copd"), 1.5, 1.0) * np.where(chest & (persons.smoking[person] == 0), 1.5, 1.0)
        boost *= np.where(abdomen & (has("obesity") | has("t2dm")), 1.4, 1.0)
        boost *= np.where(head & (has("atrial_fibrillation") | has("hypertension")), 1.3, 1.0)
        probability = np.minimum(base * boost, 0.95)
        probability = np.where(chest & has("lung_cancer"), 0.9, probability)
        lesion = rng.random(size) < probability
        diameter = np.exp(np.log(12.0) + 0.4 * rng.standard_normal(size))
        diameter = np.where(chest & has("lung_cancer"), diameter * 1.8, diameter)
        diameter = np.round(np.clip(diameter, 4.0, 60.0), 1)
        return _Imaging(person, visit_position, modality, site, lesion, diameter)

    def procedure_occurrence(
        self, persons: _Persons, visits: _Visits, imaging: _Imaging
    ) -> tuple[GeneratedTable, IntArray]:
        """The procedure table and, per imaging study, the id of its CT/MR procedure row."""
        p, rng = self.profile, self.rng
        cardiac = persons.has("mi") | persons.has("atrial_fibrillation") | persons.has("heart_failure")
        lungs = persons.has("asthma") | persons.has("copd")
        rates = {
            "ecg": 0.1 + 0.6 * cardiac,
            "spirometry": 0.03 + 0.7 * lungs,
            "echo": 0.02 + 0.8 * persons.has("heart_failure") + 0.3 * persons.has("mi"),
        }
        parts_person: list[IntArray] = []
        parts_visit: list[IntArray] = []
        parts_kind: list[IntArray] = []
        for key, rate in rates.items():
            person = self._repeat(rng.poisson(rate).astype(np.int64))
            parts_person.append(person)
            parts_visit.append(self._pick_visit(visits, person))
            parts_kind.append(np.full(len(person), PROCEDURE_INDEX[key], dtype=np.int64))
        # Imaging procedures: kinds after the ordinary ones, one per modality x site.
        parts_person.append(imaging.person)
        parts_visit.append(imaging.visit_position)
        parts_kind.append(len(PROCEDURES) + imaging.modality * len(SITES) + imaging.site)
        ordinary = sum(len(x) for x in parts_person[:-1])
        source = np.concatenate([np.full(ordinary, -1, dtype=np.int64), np.arange(len(imaging.person))])

        person, visit, kind = np.concatenate(parts_person), np.concatenate(parts_visit), np.concatenate(parts_kind)
        order = np.lexsort((kind, visits.start[visit], person))
        person, visit, kind, source = person[order], visit[order], kind[order], source[order]
        procedure_id = self.ids.take("procedure_occurrence", len(person))
        imaging_ids = np.empty(len(imaging.person), dtype=np.int64)
        imaging_ids[source[source >= 0]] = procedure_id[source >= 0]

        concepts = [x.concept_id for x in PROCEDURES] + [MODALITY_CONCEPTS[m] for m in MODALITIES for _ in SITES]
        names = [x.name for x in PROCEDURES] + [f"{m} {p.site_source_values[s]}" for m in MODALITIES for s in SITES]
        return (
            GeneratedTable(
                "procedure_occurrence",
                (
                    _int(procedure_id, "procedure_occurrence_id"),
                    _int(persons.person_id[person], "person_id"),
                    _int(np.array(concepts, dtype=np.int64)[kind], "procedure_concept_id"),
                    _date(visits.start[visit], "procedure_date"),
                    _int(np.full(len(person), TYPE_EHR), "procedure_type_concept_id"),
                    _int(visits.visit_id[visit], "visit_occurrence_id"),
                    _vocab(kind, names, "procedure_source_value"),
                ),
            ),
            imaging_ids,
        )

    def observation(self, persons: _Persons, visits: _Visits) -> GeneratedTable:
        recorded = np.flatnonzero((self.rng.random(self.count) < 0.75) & (persons.age >= 16))
        visit = self._pick_visit(visits, recorded)
        status = persons.smoking[recorded]
        loinc = self.profile.measurement_coding == "loinc"
        return GeneratedTable(
            "observation",
            (
                _int(self.ids.take("observation", len(recorded)), "observation_id"),
                _int(persons.person_id[recorded], "person_id"),
                _int(np.full(len(recorded), SMOKING_STATUS), "observation_concept_id"),
                _date(visits.start[visit], "observation_date"),
                _int(np.full(len(recorded), TYPE_EHR), "observation_type_concept_id"),
                _int(np.array([v[0] for v in SMOKING_VALUES], dtype=np.int64)[status], "value_as_concept_id"),
                _int(visits.visit_id[visit], "visit_occurrence_id"),
                _vocab(np.zeros(len(recorded), dtype=np.int64), ["72166-2" if loinc else "SMOKING"],
                       "observation_source_value"),
                _vocab(status, [v[1] for v in SMOKING_VALUES], "value_source_value"),
            ),
        )  # fmt: skip

    def image_tables(
        self,
        persons: _Persons,
        visits: _Visits,
        imaging: _Imaging,
        procedure_ids: IntArray,
        lesion_measurement_ids: IntArray,
        tag: int,
    ) -> list[GeneratedTable]:
        p, size = self.profile, len(imaging.person)
        occurrence_id = self.ids.take("image_occurrence", size)
        person_id = persons.person_id[imaging.person]
        site_concepts = np.array([SITE_SPECS[s].concept_id for s in SITES], dtype=np.int64)
        study_uid = np.strings.add(f"{UID_ROOT}.{tag}.".encode(), occurrence_id.astype(np.bytes_))
        series_uid = np.strings.add(study_uid, b".1")
        if size and int(np.strings.str_len(series_uid).max()) > MAX_UID_LENGTH:
            raise ValueError("too many imaging studies for 64-character DICOM UIDs")
        accession = np.strings.add(p.accession_prefix.encode(), _digits(occurrence_id, 8))
        occurrence = GeneratedTable(
            "image_occurrence",
            (
                _int(occurrence_id, "image_occurrence_id"),
                _int(person_id, "person_id"),
                _int(procedure_ids, "procedure_occurrence_id"),
                _int(visits.visit_id[imaging.visit_position], "visit_occurrence_id"),
                _int(site_concepts[imaging.site], "anatomic_site_concept_id"),
                _date(visits.start[imaging.visit_position], "image_occurrence_date"),
                _int(np.array([MODALITY_CONCEPTS[m] for m in MODALITIES])[imaging.modality], "modality_concept_id"),
                Column("image_study_uid", "text", study_uid),
                Column("image_series_uid", "text", series_uid),
                Column("accession_id", "text", accession),
                _vocab(imaging.modality, MODALITIES, "modality_source_value"),
                _vocab(imaging.site, [p.site_source_values[s] for s in SITES], "anatomic_site_source_value"),
            ),
        )
        lesions = np.flatnonzero(imaging.lesion)
        feature_id = self.ids.take("image_feature", len(lesions))
        finding_concepts = np.array([SITE_SPECS[s].finding_concept_id for s in SITES], dtype=np.int64)
        feature = GeneratedTable(
            "image_feature",
            (
                _int(feature_id, "image_feature_id"),
                _int(person_id[lesions], "person_id"),
                _int(occurrence_id[lesions], "image_occurrence_id"),
                _int(np.full(len(lesions), FIELD_MEASUREMENT_ID), "image_feature_event_field_concept_id"),
                _int(lesion_measurement_ids[lesions], "image_feature_event_id"),
                _int(np.full(len(lesions), LESION_DIAMETER), "image_feature_concept_id"),
                _int(np.full(len(lesions), TYPE_EHR), "image_feature_type_concept_id"),
                _int(finding_concepts[imaging.site[lesions]], "image_finding_concept_id"),
                _int(feature_id, "image_finding_id"),
                _int(site_concepts[imaging.site[lesions]], "anatomic_site_concept_id"),
            ),
        )
        return [occurrence, feature]

    # -- the whole block ------------------------------------------------------------------------

    def generate(self, tag: int) -> dict[Table, GeneratedTable]:
        persons, tables = self.persons()
        visits, visit_table = self.visits(persons)
        imaging = self.imaging(persons, visits)
        procedures, procedure_ids = self.procedure_occurrence(persons, visits, imaging)
        measurements, lesion_ids = self.measurement(persons, visits, imaging)
        tables += [
            visit_table,
            self.condition_occurrence(persons, visits),
            self.drug_exposure(persons, visits),
            procedures,
            measurements,
            self.observation(persons, visits),
            *self.image_tables(persons, visits, imaging, procedure_ids, lesion_ids, tag),
        ]
        by_name = {t.name: t for t in tables}
        return {name: by_name[name] for name in GENERATED_TABLES}


def _check_arguments(persons: int, seed: int) -> None:
    if persons < 1:
        raise ValueError("persons must be at least 1")
    if persons > 100_000_000:
        raise ValueError("persons must be at most 100,000,000")
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")


def generate_blocks(profile: TrustProfile, persons: int, seed: int) -> Iterator[dict[Table, GeneratedTable]]:
    """Every generated table for ``persons`` persons, a block of :data:`BLOCK_PERSONS` at a time.

    Deterministic: the same ``(profile, persons, seed)`` yields the same rows in the same order.
    """
    _check_arguments(persons, seed)
    tag = dataset_tag(profile, persons, seed)
    ids = _Ids()
    for block, first in enumerate(range(0, persons, BLOCK_PERSONS)):
        count = min(BLOCK_PERSONS, persons - first)
        yield _BlockGenerator(profile, seed, block, first + 1, count, ids).generate(tag)
