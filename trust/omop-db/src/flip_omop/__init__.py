"""FLIP trust OMOP database: DDL, read-only role and the synthetic-data generator.

Public API:

* :func:`create_schema` and :func:`create_readonly_role` — schema ``omop`` (OMOP CDM 5.4 + MI-CDM
  imaging tables) and the role the data-access-api queries it through;
* :class:`TrustProfile`, :data:`PROFILES`, :func:`get_profile`, :func:`profile_for` — what makes
  each trust's synthetic slice different;
* :func:`load_synthetic` — generate ``(profile, persons, seed)`` and bulk-load it;
* :func:`refresh_person_summary` — rebuild the per-person summary cohort statistics read;
* :func:`image_occurrences` — the same dataset's imaging studies without a database, for writing
  the matching synthetic DICOM studies.
"""

from flip_omop.generator import UID_ROOT, generate_blocks
from flip_omop.imaging import ImagingStudy, image_occurrences
from flip_omop.loader import LoadSummary, SchemaNotEmptyError, load_synthetic, non_empty_tables
from flip_omop.profiles import PROFILE_NAMES, PROFILES, TrustProfile, get_profile, profile_for
from flip_omop.schema import (
    OMOP_SCHEMA,
    PERSON_SUMMARY,
    TABLES,
    ReadOnlyRoleError,
    create_readonly_role,
    create_schema,
    ddl,
    refresh_person_summary,
)

__all__ = [
    "OMOP_SCHEMA",
    "PERSON_SUMMARY",
    "PROFILES",
    "PROFILE_NAMES",
    "TABLES",
    "UID_ROOT",
    "ImagingStudy",
    "LoadSummary",
    "ReadOnlyRoleError",
    "SchemaNotEmptyError",
    "TrustProfile",
    "create_readonly_role",
    "create_schema",
    "ddl",
    "generate_blocks",
    "get_profile",
    "image_occurrences",
    "load_synthetic",
    "non_empty_tables",
    "profile_for",
    "refresh_person_summary",
]
