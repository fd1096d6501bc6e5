"""The deliberately identifying details written into every synthetic DICOM study.

Real studies arrive from a PACS full of protected health information: names in the patient
module, but also clinicians' names, the institution, free-text descriptions and comments that
mention the patient, vendor private tags, device serial numbers.  The synthetic studies carry all of
these so that de-identification is tested against something realistic, and every value is derived
from the :class:`~flip_omop.ImagingStudy` alone (hashes of its hospital number, accession id and
accession prefix), so that a test can recompute exactly which strings must not survive
(:func:`phi_values`).  All values are plain ASCII.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from flip_omop import ImagingStudy

# Distinctive (≥ 6 letters) so that a name found in a de-identified file is a leak, not a coincidence.
_FAMILY_NAMES = (
    "Ashworth",
    "Blackwood",
    "Cartwright",
    "Donnelly",
    "Entwistle",
    "Fairbairn",
    "Greenhalgh",
    "Hargreaves",
    "Illingworth",
    "Jameson",
    "Kershaw",
    "Lockwood",
    "Marsden",
    "Nightingale",
    "Oldroyd",
    "Pemberton",
    "Quarmby",
    "Rushworth",
    "Sutcliffe",
    "Thornbury",
    "Underwood",
    "Venables",
    "Whitehead",
    "Yardley",
)
_GIVEN_NAMES = {
    "F": ("Eleanor", "Margaret", "Priya", "Abigail", "Florence", "Harriet", "Imogen", "Rosalind", "Yasmin", "Zainab"),
    "M": (
        "Alistair",
        "Bartholomew",
        "Cedric",
        "Desmond",
        "Ezekiel",
        "Gregory",
        "Kwabena",
        "Leopold",
        "Rajesh",
        "Tobias",
    ),
}
# Clinicians come from other lists so that a clinician is never mistaken for the patient.
_CLINICIAN_FAMILY = ("Okonkwo", "Fitzgerald", "Haddleton", "Mukherjee", "Prendergast", "Ravensworth", "Szymanski")
_CLINICIAN_GIVEN = ("Adaeze", "Beatrix", "Cornelius", "Dorothea", "Evander", "Gwendolyn", "Montgomery")

# The demo's three trusts, by accession prefix; any other prefix gets a name made from it.
_INSTITUTIONS = {
    "NTH": ("Northfield Royal Infirmary", "Infirmary Road, Northfield, NF1 4RX"),
    "STH": ("Southmere University Hospital", "12 Downs Avenue, Southmere, SM3 9QT"),
    "EST": ("Eastbrook General Hospital", "Quay Street, Eastbrook, EB7 2LH"),
}
_PREFIX = re.compile(r"^[A-Z]+")


@dataclass(frozen=True)
class StudyPhi:
    """The identifying values one synthetic study carries, beyond its accession id and UIDs."""

    patient_name: str
    """DICOM person name ``FAMILY^Given``."""
    patient_name_text: str
    """The same name as free text (``Given Family``), as it appears in descriptions and comments."""
    hospital_number: str
    birth_date: str
    """``YYYYMMDD``."""
    nhs_number: str
    """A valid-looking NHS number (ten digits, modulus-11 check digit) in OtherPatientIDs."""
    institution_name: str
    institution_address: str
    referring_physician: str
    performing_physician: str
    operator: str
    station_name: str
    device_serial_number: str
    study_description: str
    series_description: str
    image_comments: str


def study_phi(study: ImagingStudy) -> StudyPhi:
    """The identifying values written into ``study``'s files (deterministic, from the study alone)."""
    hospital = study.person_source_value
    family = _pick(_FAMILY_NAMES, "family", hospital)
    given = _pick(_GIVEN_NAMES[study.sex], "given", hospital)
    name_text = f"{given} {family}"
    prefix = _accession_prefix(study.accession_id)
    institution, address = _INSTITUTIONS.get(prefix, (f"{prefix} District Hospital", f"1 Hospital Road, {prefix}1 1AA"))
    body_part = study.body_part_examined
    return StudyPhi(
        patient_name=f"{family.upper()}^{given}",
        patient_name_text=name_text,
        hospital_number=hospital,
        birth_date=study.birth_date.strftime("%Y%m%d"),
        nhs_number=_nhs_number(hospital),
        institution_name=institution,
        institution_address=address,
        referring_physician=_clinician("referrer", study.accession_id),
        performing_physician=_clinician("radiologist", study.accession_id),
        operator=_clinician("radiographer", study.accession_id),
        station_name=f"{prefix}{study.modality}01",
        device_serial_number=str(_number("serial", f"{prefix}/{study.modality}") % 900_000 + 100_000),
        study_description=f"{study.modality} {body_part} for {name_text}",
        series_description=f"Axial {body_part} {name_text}",
        image_comments=f"Hospital no. {hospital}; {name_text} consented for imaging; prior studies reviewed.",
    )


def phi_values(study: ImagingStudy) -> set[str]:
    """The exact strings in ``study``'s files that must not survive de-identification.

    Names (as DICOM person names and as free text), the hospital number, birth date and NHS
    number, the institution's name and address, clinicians, the station name and the device serial
    number.  The accession id and the UIDs are not listed: de-identification replaces those too,
    but a trust keeps its accession ids as the key of its research store, so they are checked by
    the tests that own that mapping.
    """
    phi = study_phi(study)
    return {
        phi.patient_name,
        phi.patient_name_text,
        phi.hospital_number,
        phi.birth_date,
        phi.nhs_number,
        phi.institution_name,
        phi.institution_address,
        phi.referring_physician,
        phi.performing_physician,
        phi.operator,
        phi.station_name,
        phi.device_serial_number,
    }


def _accession_prefix(accession: str) -> str:
    match = _PREFIX.match(accession)
    return match.group(0) if match else "FLIP"


def _number(purpose: str, key: str) -> int:
    """A stable 64-bit number for ``key``; ``purpose`` keeps the draws for different fields independent."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=purpose.encode()[:16]).digest()
    return int.from_bytes(digest, "big")


def _pick(choices: tuple[str, ...], purpose: str, key: str) -> str:
    return choices[_number(purpose, key) % len(choices)]


def _clinician(role: str, accession: str) -> str:
    family = _pick(_CLINICIAN_FAMILY, f"{role}-f", accession)
    given = _pick(_CLINICIAN_GIVEN, f"{role}-g", accession)
    return f"{family.upper()}^{given}^^Dr" if role != "radiographer" else f"{family.upper()}^{given}"


def _nhs_number(hospital_number: str) -> str:
    """Ten digits whose last is the NHS modulus-11 check digit of the first nine (10 is never valid)."""
    attempt = 0
    while True:
        body = f"{_number('nhs', f'{hospital_number}/{attempt}') % 10**9:09d}"
        # Real NHS numbers start 3-9 (1 and 2 are reserved); a leading 4 makes the whole thing look real.
        body = "4" + body[1:]
        check = 11 - sum(int(d) * w for d, w in zip(body, range(10, 1, -1), strict=True)) % 11
        if check != 10:
            return body + str(0 if check == 11 else check)
        attempt += 1
