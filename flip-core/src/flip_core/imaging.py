"""The imaging contract: what the hub asks a trust about a project's images, and the shape of the answers.

Task payloads (sealed for the trust, see :mod:`flip_core.tasks`):

* ``create_imaging`` → :class:`CreateImagingPayload` — import the approved cohort's studies from the PACS
  (it depends on that trust's ``persist_cohort`` task: the accession ids come from the frozen cohort);
* ``get_imaging_status`` → :class:`ImagingProjectPayload`;
* ``reimport_studies`` → :class:`ImagingProjectPayload` (retry the FAILED ones);
* ``delete_imaging`` → :class:`ImagingProjectPayload`.

Each answers with :class:`ImagingStatus`: per-state study counts, every one a
:class:`~flip_core.cohort.GatedCount` made by the trust's disclosure gate (a count of studies is a count
about patients), and failure reasons as fixed codes with gated counts.  No accession id, UID or patient
attribute ever appears in an answer.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from flip_core.cohort import DEFAULT_MIN_K, MAX_K, GatedCount


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyState(StrEnum):
    """Where one study of a project's import is; READY and FAILED are the only resting states."""

    QUEUED = "QUEUED"
    RETRIEVING = "RETRIEVING"
    CONVERTING = "CONVERTING"
    READY = "READY"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (StudyState.READY, StudyState.FAILED)


class StudyFailure(StrEnum):
    """Why a study failed, in categories safe to report (never a PACS message or a patient attribute)."""

    NOT_FOUND = "not_found"  # no study in the PACS for the accession
    AMBIGUOUS = "ambiguous"  # several studies for one accession
    INVALID_ACCESSION = "invalid_accession"  # blank, wildcard or unsafe characters
    PACS_UNAVAILABLE = "pacs_unavailable"
    RETRIEVE_FAILED = "retrieve_failed"
    CORRUPT = "corrupt"  # unreadable DICOM or no pixel data
    DEIDENTIFICATION_FAILED = "deidentification_failed"
    CONVERSION_FAILED = "conversion_failed"
    TIMED_OUT = "timed_out"  # a state outlived its deadline
    INTERNAL_ERROR = "internal_error"


class ImagingErrorCode(StrEnum):
    """Why a trust could not act on an imaging task, in categories safe to show the researcher."""

    NOT_APPROVED = "not_approved"  # this trust holds no frozen cohort for the project
    NO_ACCESSION_COLUMN = "no_accession_column"  # the frozen cohort has no accession_id column
    BELOW_THRESHOLD = "below_threshold"  # the frozen cohort is smaller than the trust's threshold
    NOT_IMPORTED = "not_imported"  # status, re-import or images of a project never imported here
    DATA_UNAVAILABLE = "data_unavailable"  # the trust's data-access-api is down
    IMAGING_UNAVAILABLE = "imaging_unavailable"  # the trust's imaging-api is down or not configured
    INTERNAL_ERROR = "internal_error"


class CreateImagingPayload(_Wire):
    """The ``create_imaging`` task: import the studies of this project's frozen cohort at this trust."""

    project_id: uuid.UUID
    query_id: uuid.UUID
    dicom_to_nifti: bool = Field(description="convert each series to NIfTI (fixed when the project was created)")
    min_k: int = Field(DEFAULT_MIN_K, ge=1, le=MAX_K)


class ImagingProjectPayload(_Wire):
    """``get_imaging_status`` / ``reimport_studies`` / ``delete_imaging`` for one project."""

    project_id: uuid.UUID
    min_k: int = Field(DEFAULT_MIN_K, ge=1, le=MAX_K)


class FailureCount(_Wire):
    reason: StudyFailure
    count: GatedCount


class ImagingStatus(_Wire):
    """A trust's imaging import of one project, in gated counts only."""

    project_id: uuid.UUID
    k: int = Field(ge=1, le=MAX_K, description="the threshold applied")
    studies: GatedCount = Field(description="studies in the import, all states")
    by_state: dict[StudyState, GatedCount]
    failures: list[FailureCount] = Field(max_length=len(StudyFailure))
    complete: bool = Field(description="every study is READY or FAILED")
    deleted: bool = False
    updated_at: datetime
