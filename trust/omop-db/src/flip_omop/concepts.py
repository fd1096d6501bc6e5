"""The vocabulary subset the synthetic data uses, loaded into ``omop.concept``.

Standard OMOP concept ids are used wherever one is well known (genders, visit and type concepts,
SNOMED conditions, LOINC measurements, UCUM units, RxNorm ingredients, the CT and MRI procedure
concepts).  Where FLIP needs a concept without a well-known standard id (anatomic sites, imaging
findings, the lesion-size measurement, smoking status, a few procedures) it uses a *local* concept
in the range OMOP reserves for site-specific concepts (``concept_id > 2,000,000,000``) under the
vocabulary ``FLIP``; its ``concept_code`` is the SNOMED or LOINC code it stands for, or a
``FLIP-...`` code where no single external code fits.  Type and field concepts, whose official codes
no query needs, carry their concept id as code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

LOCAL_CONCEPT_BASE = 2_000_000_000
"""OMOP reserves concept ids above two billion for local (site-specific) concepts."""

VALID_START = date(1970, 1, 1)
VALID_END = date(2099, 12, 31)


@dataclass(frozen=True)
class Concept:
    """One row of ``omop.concept``."""

    concept_id: int
    concept_name: str
    domain_id: str
    vocabulary_id: str
    concept_class_id: str
    concept_code: str
    standard_concept: str | None = "S"


# --- demographics, visits and record provenance ---------------------------------------------------

MALE = 8507
FEMALE = 8532
RACE_WHITE = 8527
RACE_BLACK = 8516
RACE_ASIAN = 8515
NO_MATCHING_CONCEPT = 0

INPATIENT_VISIT = 9201
OUTPATIENT_VISIT = 9202
EMERGENCY_VISIT = 9203

TYPE_EHR = 32817
TYPE_EHR_ENCOUNTER_DIAGNOSIS = 32020
TYPE_EHR_BILLING_DIAGNOSIS = 32019
TYPE_EHR_PRESCRIPTION = 32838
TYPE_LAB = 32856

FIELD_MEASUREMENT_ID = 1147330
"""CDM field concept for ``measurement.measurement_id`` (``image_feature_event_field_concept_id``)."""

# --- imaging ------------------------------------------------------------------------------------

Modality = Literal["CT", "MR"]
MODALITIES: tuple[Modality, ...] = ("CT", "MR")
MODALITY_CONCEPTS: dict[Modality, int] = {"CT": 4300757, "MR": 4013636}
"""SNOMED procedure concepts "Computed tomography" and "Magnetic resonance imaging"."""

Site = Literal["chest", "abdomen", "head"]
SITES: tuple[Site, ...] = ("chest", "abdomen", "head")


@dataclass(frozen=True)
class SiteSpec:
    """An imaged body region: its anatomic-site concept, DICOM body part and the finding looked for."""

    site: Site
    concept_id: int
    name: str
    snomed: str
    body_part_examined: str  # DICOM (0018,0015)
    finding_concept_id: int
    finding_name: str
    finding_code: str  # local FLIP code (no single standard concept for "a lesion seen here")


SITE_SPECS: dict[Site, SiteSpec] = {
    "chest": SiteSpec(
        "chest", LOCAL_CONCEPT_BASE + 20, "Lung structure", "39607008", "CHEST",
        LOCAL_CONCEPT_BASE + 30, "Pulmonary nodule", "FLIP-LUNG-NODULE",
    ),
    "abdomen": SiteSpec(
        "abdomen", LOCAL_CONCEPT_BASE + 21, "Liver structure", "10200004", "ABDOMEN",
        LOCAL_CONCEPT_BASE + 31, "Focal lesion of liver", "FLIP-LIVER-LESION",
    ),
    "head": SiteSpec(
        "head", LOCAL_CONCEPT_BASE + 22, "Brain structure", "12738006", "HEAD",
        LOCAL_CONCEPT_BASE + 32, "Lesion of brain", "FLIP-BRAIN-LESION",
    ),
}  # fmt: skip

LESION_DIAMETER = LOCAL_CONCEPT_BASE + 40
"""Measurement "longest diameter of the imaged lesion" (mm), linked to images through image_feature."""

# --- conditions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditionSpec:
    """A condition the generator can give a person, with the codes a trust may record it under."""

    key: str
    concept_id: int
    name: str
    snomed: str
    icd10: str  # dotted form, e.g. "E11.9"
    age_slope: float  # log prevalence change per decade of age around 50


CONDITIONS: tuple[ConditionSpec, ...] = (
    ConditionSpec("obesity", 433736, "Obesity", "414916001", "E66.9", 0.05),
    ConditionSpec("hypertension", 320128, "Essential hypertension", "59621000", "I10", 0.45),
    ConditionSpec("hyperlipidemia", 432867, "Hyperlipidemia", "55822004", "E78.5", 0.35),
    ConditionSpec("t2dm", 201826, "Type 2 diabetes mellitus", "44054006", "E11.9", 0.35),
    ConditionSpec("asthma", 317009, "Asthma", "195967001", "J45.9", -0.1),
    ConditionSpec("copd", 255573, "Chronic obstructive pulmonary disease", "13645005", "J44.9", 0.55),
    ConditionSpec("mi", 4329847, "Myocardial infarction", "22298006", "I21.9", 0.5),
    ConditionSpec("heart_failure", 316139, "Heart failure", "84114007", "I50.9", 0.65),
    ConditionSpec("atrial_fibrillation", 313217, "Atrial fibrillation", "49436004", "I48.9", 0.7),
    ConditionSpec("ckd", 46271022, "Chronic kidney disease", "709044004", "N18.9", 0.6),
    ConditionSpec("depression", 440383, "Depressive disorder", "35489007", "F32.9", 0.0),
    ConditionSpec("osteoarthritis", 80180, "Osteoarthritis", "396275006", "M19.9", 0.6),
    ConditionSpec("lung_cancer", 443388, "Malignant tumor of lung", "363358000", "C34.9", 0.6),
)
CONDITION_INDEX: dict[str, int] = {c.key: i for i, c in enumerate(CONDITIONS)}

# --- measurements ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    concept_id: int
    code: str  # UCUM, also what a trust writes in unit_source_value
    name: str


UNITS: dict[str, Unit] = {
    u.code: u
    for u in (
        Unit(9579, "mmol/mol", "millimole per mole"),
        Unit(8554, "%", "percent"),
        Unit(8749, "umol/L", "micromole per liter"),
        Unit(8840, "mg/dL", "milligram per deciliter"),
        Unit(8753, "mmol/L", "millimole per liter"),
        Unit(9531, "kg/m2", "kilogram per square meter"),
        Unit(8876, "mm[Hg]", "millimeter mercury column"),
        Unit(9529, "kg", "kilogram"),
        Unit(8588, "mm", "millimeter"),
    )
}


@dataclass(frozen=True)
class MeasurementSpec:
    """A measurement and how a trust may report it: SI units or conventional (US) units."""

    key: str
    concept_id: int
    name: str
    loinc: str
    local_code: str
    si_unit: str
    conventional_unit: str
    to_conventional: tuple[float, float]  # conventional = si * factor + offset
    si_scale: int  # decimals recorded
    conventional_scale: int
    type_concept_id: int


MEASUREMENTS: tuple[MeasurementSpec, ...] = (
    MeasurementSpec("bmi", 3038553, "Body mass index", "39156-5", "BMI", "kg/m2", "kg/m2", (1.0, 0.0), 1, 1, TYPE_EHR),
    MeasurementSpec("sbp", 3004249, "Systolic blood pressure", "8480-6", "SBP", "mm[Hg]", "mm[Hg]", (1.0, 0.0), 0, 0,
                    TYPE_EHR),
    MeasurementSpec("dbp", 3012888, "Diastolic blood pressure", "8462-4", "DBP", "mm[Hg]", "mm[Hg]", (1.0, 0.0), 0, 0,
                    TYPE_EHR),
    MeasurementSpec("weight", 3025315, "Body weight", "29463-7", "WT", "kg", "kg", (1.0, 0.0), 1, 1, TYPE_EHR),
    MeasurementSpec("hba1c", 3004410, "Hemoglobin A1c/Hemoglobin.total in Blood", "4548-4", "HBA1C", "mmol/mol", "%",
                    (1 / 10.929, 2.15), 0, 1, TYPE_LAB),
    MeasurementSpec("creatinine", 3016723, "Creatinine [Mass/volume] in Serum or Plasma", "2160-0", "CREA", "umol/L",
                    "mg/dL", (1 / 88.42, 0.0), 0, 2, TYPE_LAB),
    MeasurementSpec("cholesterol", 3027114, "Cholesterol [Mass/volume] in Serum or Plasma", "2093-3", "CHOL",
                    "mmol/L", "mg/dL", (38.67, 0.0), 1, 0, TYPE_LAB),
)  # fmt: skip
MEASUREMENT_INDEX: dict[str, int] = {m.key: i for i, m in enumerate(MEASUREMENTS)}

# --- drugs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrugSpec:
    """An RxNorm ingredient and the product text a prescribing system writes for it."""

    key: str
    concept_id: int
    name: str
    rxcui: str  # RxNorm code of the ingredient (concept_code)
    product: str


DRUGS: tuple[DrugSpec, ...] = (
    DrugSpec("metformin", 1503297, "metformin", "6809", "Metformin 500mg tablets"),
    DrugSpec("atorvastatin", 1545958, "atorvastatin", "83367", "Atorvastatin 20mg tablets"),
    DrugSpec("simvastatin", 1539403, "simvastatin", "36567", "Simvastatin 40mg tablets"),
    DrugSpec("amlodipine", 1332418, "amlodipine", "17767", "Amlodipine 5mg tablets"),
    DrugSpec("ramipril", 1334456, "ramipril", "35296", "Ramipril 5mg capsules"),
    DrugSpec("lisinopril", 1308216, "lisinopril", "29046", "Lisinopril 10mg tablets"),
    DrugSpec("salbutamol", 1154343, "albuterol", "435", "Salbutamol 100micrograms/dose inhaler"),
    DrugSpec("aspirin", 1112807, "aspirin", "1191", "Aspirin 75mg dispersible tablets"),
    DrugSpec("apixaban", 43013024, "apixaban", "1364430", "Apixaban 5mg tablets"),
    DrugSpec("sertraline", 739138, "sertraline", "36437", "Sertraline 50mg tablets"),
    DrugSpec("paracetamol", 1125315, "acetaminophen", "161", "Paracetamol 500mg tablets"),
    DrugSpec("omeprazole", 923645, "omeprazole", "7646", "Omeprazole 20mg gastro-resistant capsules"),
)
DRUG_INDEX: dict[str, int] = {d.key: i for i, d in enumerate(DRUGS)}

# --- procedures and observations ------------------------------------------------------------------


@dataclass(frozen=True)
class ProcedureSpec:
    key: str
    concept_id: int
    name: str
    snomed: str


PROCEDURES: tuple[ProcedureSpec, ...] = (
    ProcedureSpec("ecg", LOCAL_CONCEPT_BASE + 10, "Electrocardiographic procedure", "29303009"),
    ProcedureSpec("spirometry", LOCAL_CONCEPT_BASE + 11, "Spirometry", "127783003"),
    ProcedureSpec("echo", LOCAL_CONCEPT_BASE + 12, "Echocardiography", "40701008"),
)
PROCEDURE_INDEX: dict[str, int] = {p.key: i for i, p in enumerate(PROCEDURES)}

SMOKING_STATUS = LOCAL_CONCEPT_BASE + 1
SMOKING_VALUES: tuple[tuple[int, str, str], ...] = (
    (LOCAL_CONCEPT_BASE + 2, "Current smoker", "77176002"),
    (LOCAL_CONCEPT_BASE + 3, "Ex-smoker", "8517006"),
    (LOCAL_CONCEPT_BASE + 4, "Never smoked tobacco", "266919005"),
)


def vocabulary() -> tuple[Concept, ...]:
    """Every concept the synthetic data refers to, sorted by id (the rows of ``omop.concept``)."""
    rows: list[Concept] = [
        Concept(NO_MATCHING_CONCEPT, "No matching concept", "Metadata", "None", "Undefined", "No matching concept",
                None),
        Concept(MALE, "MALE", "Gender", "Gender", "Gender", "M"),
        Concept(FEMALE, "FEMALE", "Gender", "Gender", "Gender", "F"),
        Concept(RACE_WHITE, "White", "Race", "Race", "Race", "5"),
        Concept(RACE_BLACK, "Black or African American", "Race", "Race", "Race", "3"),
        Concept(RACE_ASIAN, "Asian", "Race", "Race", "Race", "2"),
        Concept(INPATIENT_VISIT, "Inpatient Visit", "Visit", "Visit", "Visit", "IP"),
        Concept(OUTPATIENT_VISIT, "Outpatient Visit", "Visit", "Visit", "Visit", "OP"),
        Concept(EMERGENCY_VISIT, "Emergency Room Visit", "Visit", "Visit", "Visit", "ER"),
        Concept(TYPE_EHR, "EHR", "Type Concept", "Type Concept", "Type Concept", str(TYPE_EHR)),
        Concept(TYPE_EHR_BILLING_DIAGNOSIS, "EHR billing diagnosis", "Type Concept", "Type Concept", "Type Concept",
                str(TYPE_EHR_BILLING_DIAGNOSIS)),
        Concept(TYPE_EHR_ENCOUNTER_DIAGNOSIS, "EHR encounter diagnosis", "Type Concept", "Type Concept",
                "Type Concept", str(TYPE_EHR_ENCOUNTER_DIAGNOSIS)),
        Concept(TYPE_EHR_PRESCRIPTION, "EHR prescription", "Type Concept", "Type Concept", "Type Concept",
                str(TYPE_EHR_PRESCRIPTION)),
        Concept(TYPE_LAB, "Lab", "Type Concept", "Type Concept", "Type Concept", str(TYPE_LAB)),
        Concept(FIELD_MEASUREMENT_ID, "measurement.measurement_id", "Metadata", "CDM", "Field",
                str(FIELD_MEASUREMENT_ID)),
        Concept(MODALITY_CONCEPTS["CT"], "Computed tomography", "Procedure", "SNOMED", "Procedure", "77477000"),
        Concept(MODALITY_CONCEPTS["MR"], "Magnetic resonance imaging", "Procedure", "SNOMED", "Procedure",
                "113091000"),
        Concept(LESION_DIAMETER, "Lesion longest diameter on imaging", "Measurement", "FLIP", "Clinical Observation",
                "FLIP-LESION-DIAMETER"),
        Concept(SMOKING_STATUS, "Tobacco smoking status", "Observation", "FLIP", "Clinical Observation", "72166-2"),
    ]  # fmt: skip
    rows += [Concept(c, name, "Meas Value", "FLIP", "Clinical Finding", code) for c, name, code in SMOKING_VALUES]
    for s in SITE_SPECS.values():
        rows.append(Concept(s.concept_id, s.name, "Spec Anatomic Site", "FLIP", "Body Structure", s.snomed))
        rows.append(Concept(s.finding_concept_id, s.finding_name, "Observation", "FLIP", "Clinical Finding",
                            s.finding_code))  # fmt: skip
    rows += [Concept(c.concept_id, c.name, "Condition", "SNOMED", "Clinical Finding", c.snomed) for c in CONDITIONS]
    rows += [Concept(m.concept_id, m.name, "Measurement", "LOINC", "Lab Test", m.loinc) for m in MEASUREMENTS]
    rows += [Concept(u.concept_id, u.name, "Unit", "UCUM", "Unit", u.code) for u in UNITS.values()]
    rows += [Concept(d.concept_id, d.name, "Drug", "RxNorm", "Ingredient", d.rxcui) for d in DRUGS]
    rows += [Concept(p.concept_id, p.name, "Procedure", "FLIP", "Procedure", p.snomed) for p in PROCEDURES]
    ids = [r.concept_id for r in rows]
    if len(ids) != len(set(ids)):
        raise AssertionError("duplicate concept ids in the FLIP vocabulary subset")
    return tuple(sorted(rows, key=lambda r: r.concept_id))
