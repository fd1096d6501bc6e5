"""Trust profiles: what makes one hospital's synthetic slice different from another's.

Federated learning is only meaningful on heterogeneous data, so each trust draws its population
from its own profile: a different age and sex mix, different disease prevalence, different coding
habits (how a diagnosis, a sex or a visit type is written in the source columns, SI versus
conventional lab units), a different prescribing habit and a different imaging practice (CT/MR mix,
body sites, how often a lesion is found).  Three built-in profiles cover the demo's three trusts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar

from flip_omop.concepts import (
    CONDITION_INDEX,
    DRUG_INDEX,
    EMERGENCY_VISIT,
    INPATIENT_VISIT,
    OUTPATIENT_VISIT,
    RACE_ASIAN,
    RACE_BLACK,
    RACE_WHITE,
    SITES,
    TYPE_EHR,
    TYPE_EHR_BILLING_DIAGNOSIS,
    TYPE_EHR_ENCOUNTER_DIAGNOSIS,
    Site,
)

AGE_BANDS: tuple[tuple[int, int], ...] = ((0, 18), (18, 40), (40, 65), (65, 80), (80, 100))
"""Age bands (years at the extract date, lower bound inclusive) that ``age_band_weights`` weight."""

ConditionCoding = Literal["icd10", "icd10_compact", "snomed"]
"""How ``condition_source_value`` is written: ``E11.9``, ``E119`` or ``44054006``."""
GenderCoding = Literal["letter", "nhs", "word"]
"""How ``gender_source_value`` is written: ``M``/``F``, NHS ``1``/``2``, or ``male``/``female``."""
LabUnits = Literal["si", "conventional"]
"""SI units (mmol/mol, umol/L, mmol/L) or conventional US units (%, mg/dL)."""
MeasurementCoding = Literal["loinc", "local"]
"""``measurement_source_value`` as LOINC codes or the lab system's own short codes."""
DrugCoding = Literal["product", "ingredient"]
"""``drug_source_value`` as the prescribed product text or the upper-case ingredient name."""

_PREFIX = re.compile(r"^[A-Z]{2,4}$")
K = TypeVar("K")
V = TypeVar("V")


def _frozen(mapping: Mapping[K, V]) -> Mapping[K, V]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class TrustProfile:
    """The knobs that make one trust's synthetic population and records differ from another's."""

    name: str
    description: str
    accession_prefix: str
    """Two to four capital letters starting every accession id (and hospital number) of this trust."""
    female_fraction: float
    age_band_weights: tuple[float, ...]
    race_mix: Mapping[int, float]
    condition_prevalence: Mapping[str, float]
    """Probability of each condition (keys of :data:`flip_omop.concepts.CONDITIONS`) at age 50."""
    condition_coding: ConditionCoding
    condition_type_concept_id: int
    gender_coding: GenderCoding
    visit_mix: Mapping[int, float]
    """Share of inpatient / outpatient / emergency visits among ordinary (non-imaging) visits."""
    visit_source_values: Mapping[int, str]
    extra_visits: float
    """Mean number of ordinary visits beyond the first, for a person of average age."""
    lab_units: LabUnits
    measurement_coding: MeasurementCoding
    bmi_mean: float
    smoking_mix: tuple[float, float, float]
    """Share of current, ex- and never smokers."""
    statin: str
    antihypertensive: str
    days_supply: int
    drug_coding: DrugCoding
    death_rate: float
    imaging_rate: float
    """Mean imaging studies per person."""
    ct_fraction: float
    ct_sites: Mapping[Site, float]
    mr_sites: Mapping[Site, float]
    site_source_values: Mapping[Site, str]
    finding_rate: Mapping[Site, float]
    """Baseline probability that a study of this site shows a lesion (raised by related conditions)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not _PREFIX.match(self.accession_prefix):
            problems.append("accession_prefix must be 2-4 capital letters")
        if len(self.age_band_weights) != len(AGE_BANDS):
            problems.append(f"age_band_weights needs {len(AGE_BANDS)} weights")
        for label, weights in (
            ("age_band_weights", self.age_band_weights),
            ("race_mix", tuple(self.race_mix.values())),
            ("visit_mix", tuple(self.visit_mix.values())),
            ("smoking_mix", self.smoking_mix),
            ("ct_sites", tuple(self.ct_sites.values())),
            ("mr_sites", tuple(self.mr_sites.values())),
        ):
            if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
                problems.append(f"{label} must be non-negative and sum to 1")
        if set(self.visit_mix) != {INPATIENT_VISIT, OUTPATIENT_VISIT, EMERGENCY_VISIT}:
            problems.append("visit_mix needs the inpatient, outpatient and emergency visit concepts")
        if set(self.visit_source_values) != set(self.visit_mix):
            problems.append("visit_source_values needs a value per visit concept")
        unknown = set(self.condition_prevalence) - set(CONDITION_INDEX)
        if unknown:
            problems.append(f"unknown conditions {sorted(unknown)}")
        for key in (self.statin, self.antihypertensive):
            if key not in DRUG_INDEX:
                problems.append(f"unknown drug {key!r}")
        for label, mapping in (("site_source_values", self.site_source_values), ("finding_rate", self.finding_rate)):
            if set(mapping) != set(SITES):
                problems.append(f"{label} needs a value per site {SITES}")
        rates = [self.female_fraction, self.death_rate, self.ct_fraction, *self.condition_prevalence.values()]
        if any(not 0.0 <= r <= 1.0 for r in [*rates, *self.finding_rate.values()]):
            problems.append("fractions, rates and prevalences must lie between 0 and 1")
        if self.extra_visits < 0 or self.imaging_rate < 0 or self.days_supply < 1 or self.bmi_mean <= 0:
            problems.append("extra_visits and imaging_rate must be >= 0, days_supply >= 1, bmi_mean > 0")
        if problems:
            raise ValueError(f"invalid trust profile {self.name!r}: " + "; ".join(problems))


NORTH = TrustProfile(
    name="north",
    description=(
        "Older post-industrial population: more COPD, diabetes and lung nodules; ICD-10 codes with dots, "
        "SI units, local lab codes; mostly CT of the chest."
    ),
    accession_prefix="NTH",
    female_fraction=0.51,
    age_band_weights=(0.14, 0.22, 0.32, 0.22, 0.10),
    race_mix=_frozen({RACE_WHITE: 0.92, RACE_ASIAN: 0.05, RACE_BLACK: 0.02, 0: 0.01}),
    condition_prevalence=_frozen(
        {
            "obesity": 0.30,
            "hypertension": 0.22,
            "hyperlipidemia": 0.16,
            "t2dm": 0.07,
            "asthma": 0.08,
            "copd": 0.028,
            "mi": 0.016,
            "heart_failure": 0.009,
            "atrial_fibrillation": 0.013,
            "ckd": 0.026,
            "depression": 0.14,
            "osteoarthritis": 0.09,
            "lung_cancer": 0.005,
        }
    ),
    condition_coding="icd10",
    condition_type_concept_id=TYPE_EHR_ENCOUNTER_DIAGNOSIS,
    gender_coding="letter",
    visit_mix=_frozen({OUTPATIENT_VISIT: 0.78, INPATIENT_VISIT: 0.12, EMERGENCY_VISIT: 0.10}),
    visit_source_values=_frozen({OUTPATIENT_VISIT: "OP", INPATIENT_VISIT: "IP", EMERGENCY_VISIT: "AE"}),
    extra_visits=1.9,
    lab_units="si",
    measurement_coding="local",
    bmi_mean=28.4,
    smoking_mix=(0.22, 0.30, 0.48),
    statin="simvastatin",
    antihypertensive="amlodipine",
    days_supply=28,
    drug_coding="product",
    death_rate=0.06,
    imaging_rate=0.32,
    ct_fraction=0.80,
    ct_sites=_frozen({"chest": 0.60, "abdomen": 0.30, "head": 0.10}),
    mr_sites=_frozen({"head": 0.55, "abdomen": 0.35, "chest": 0.10}),
    site_source_values=_frozen({"chest": "CHEST", "abdomen": "ABDOMEN", "head": "HEAD"}),
    finding_rate=_frozen({"chest": 0.30, "abdomen": 0.18, "head": 0.12}),
)

SOUTH = TrustProfile(
    name="south",
    description=(
        "Younger, affluent population: more asthma, less diabetes and COPD; SNOMED codes, conventional "
        "(US) lab units, LOINC codes; MR-heavy imaging with more liver work."
    ),
    accession_prefix="STH",
    female_fraction=0.54,
    age_band_weights=(0.20, 0.34, 0.30, 0.11, 0.05),
    race_mix=_frozen({RACE_WHITE: 0.80, RACE_ASIAN: 0.10, RACE_BLACK: 0.08, 0: 0.02}),
    condition_prevalence=_frozen(
        {
            "obesity": 0.18,
            "hypertension": 0.17,
            "hyperlipidemia": 0.13,
            "t2dm": 0.04,
            "asthma": 0.14,
            "copd": 0.017,
            "mi": 0.011,
            "heart_failure": 0.006,
            "atrial_fibrillation": 0.013,
            "ckd": 0.02,
            "depression": 0.12,
            "osteoarthritis": 0.09,
            "lung_cancer": 0.003,
        }
    ),
    condition_coding="snomed",
    condition_type_concept_id=TYPE_EHR,
    gender_coding="word",
    visit_mix=_frozen({OUTPATIENT_VISIT: 0.85, INPATIENT_VISIT: 0.08, EMERGENCY_VISIT: 0.07}),
    visit_source_values=_frozen(
        {OUTPATIENT_VISIT: "Outpatient", INPATIENT_VISIT: "Inpatient", EMERGENCY_VISIT: "Emergency"}
    ),
    extra_visits=1.6,
    lab_units="conventional",
    measurement_coding="loinc",
    bmi_mean=25.9,
    smoking_mix=(0.10, 0.22, 0.68),
    statin="atorvastatin",
    antihypertensive="ramipril",
    days_supply=84,
    drug_coding="ingredient",
    death_rate=0.03,
    imaging_rate=0.26,
    ct_fraction=0.45,
    ct_sites=_frozen({"chest": 0.40, "abdomen": 0.40, "head": 0.20}),
    mr_sites=_frozen({"head": 0.50, "abdomen": 0.40, "chest": 0.10}),
    site_source_values=_frozen({"chest": "Thorax", "abdomen": "Abdomen", "head": "Brain"}),
    finding_rate=_frozen({"chest": 0.15, "abdomen": 0.30, "head": 0.10}),
)

EAST = TrustProfile(
    name="east",
    description=(
        "Multi-ethnic urban population with a high diabetes and kidney-disease burden and more emergency "
        "visits; ICD-10 codes without dots, NHS sex codes, SI units with LOINC codes; mixed CT/MR, mostly abdomen."
    ),
    accession_prefix="EST",
    female_fraction=0.49,
    age_band_weights=(0.18, 0.30, 0.33, 0.14, 0.05),
    race_mix=_frozen({RACE_WHITE: 0.45, RACE_ASIAN: 0.35, RACE_BLACK: 0.17, 0: 0.03}),
    condition_prevalence=_frozen(
        {
            "obesity": 0.24,
            "hypertension": 0.23,
            "hyperlipidemia": 0.16,
            "t2dm": 0.16,
            "asthma": 0.09,
            "copd": 0.026,
            "mi": 0.02,
            "heart_failure": 0.01,
            "atrial_fibrillation": 0.012,
            "ckd": 0.05,
            "depression": 0.10,
            "osteoarthritis": 0.09,
            "lung_cancer": 0.005,
        }
    ),
    condition_coding="icd10_compact",
    condition_type_concept_id=TYPE_EHR_BILLING_DIAGNOSIS,
    gender_coding="nhs",
    visit_mix=_frozen({OUTPATIENT_VISIT: 0.70, INPATIENT_VISIT: 0.14, EMERGENCY_VISIT: 0.16}),
    visit_source_values=_frozen({OUTPATIENT_VISIT: "O", INPATIENT_VISIT: "I", EMERGENCY_VISIT: "E"}),
    extra_visits=2.1,
    lab_units="si",
    measurement_coding="loinc",
    bmi_mean=27.4,
    smoking_mix=(0.16, 0.20, 0.64),
    statin="atorvastatin",
    antihypertensive="amlodipine",
    days_supply=56,
    drug_coding="product",
    death_rate=0.05,
    imaging_rate=0.35,
    ct_fraction=0.65,
    ct_sites=_frozen({"chest": 0.35, "abdomen": 0.45, "head": 0.20}),
    mr_sites=_frozen({"head": 0.40, "abdomen": 0.50, "chest": 0.10}),
    site_source_values=_frozen({"chest": "THORAX", "abdomen": "LIVER", "head": "BRAIN"}),
    finding_rate=_frozen({"chest": 0.20, "abdomen": 0.35, "head": 0.12}),
)

BUILTIN_PROFILES: tuple[TrustProfile, ...] = (NORTH, SOUTH, EAST)
PROFILES: Mapping[str, TrustProfile] = MappingProxyType({p.name: p for p in BUILTIN_PROFILES})
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def get_profile(name: str) -> TrustProfile:
    """The built-in profile called ``name`` (``ValueError`` naming the choices if there is none)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown trust profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}") from None


def profile_for(code_or_index: str | int) -> TrustProfile:
    """The profile a trust uses: by position (0, 1, 2 … cycling), by profile name, or by trust code.

    Pass positions when setting up several trusts together so that the first three get three
    different profiles; a trust code that is not a profile name maps to one through a stable hash
    (the same code always gets the same profile, across processes and machines).
    """
    if isinstance(code_or_index, bool):
        raise TypeError("profile_for takes a trust code or a position, not a bool")
    if isinstance(code_or_index, int):
        if code_or_index < 0:
            raise ValueError("a trust position cannot be negative")
        return BUILTIN_PROFILES[code_or_index % len(BUILTIN_PROFILES)]
    if code_or_index in PROFILES:
        return PROFILES[code_or_index]
    digest = hashlib.blake2b(code_or_index.encode(), digest_size=8).digest()
    return BUILTIN_PROFILES[int.from_bytes(digest, "big") % len(BUILTIN_PROFILES)]
