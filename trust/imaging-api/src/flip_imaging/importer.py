"""Importing a project's studies: find → retrieve → de-identify → (convert) → store, one study at a time,
several studies at once, every step recorded in the :class:`~flip_imaging.studies.StudyLedger`.

A study ends READY (its de-identified files, and NIfTI volumes when the project asked for them, are in
the research store under a pseudonymous study key) or FAILED with a :class:`~flip_core.imaging.StudyFailure`
reason; one bad study never stops the others.  Raw files from the PACS exist only in a staging folder
inside the store and are deleted before the study is committed, so nothing identifying is ever stored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import uuid
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import pydicom

from flip_core.imaging import StudyFailure, StudyState
from flip_imaging.deid import Deidentifier, DeidError
from flip_imaging.labels import MASK_NAME, BadMask, copy_mask, find_mask
from flip_imaging.nifti import ConversionError, convert_to_nifti
from flip_imaging.pacs import (
    AmbiguousAccession,
    InvalidAccession,
    PacsClient,
    PacsUnavailable,
    RetrieveFailed,
    StudyNotFound,
    iter_dicom_files,
)
from flip_imaging.store import DamagedStudy, ImageStore
from flip_imaging.studies import StudyLedger

log = logging.getLogger(__name__)


class StudyFailed(Exception):
    """One study's import failed for a reason that is safe to report."""

    def __init__(self, reason: StudyFailure) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass
class StudyImporter:
    """Runs the import of one project's studies with at most ``parallel`` studies in flight."""

    ledger: StudyLedger
    store: ImageStore
    pacs: PacsClient
    deid: Deidentifier
    parallel: int = 4
    convert_timeout_s: float = 300.0
    deid_pool: Executor | None = None
    """Worker processes for de-identification (CPU-bound Python: threads would share one core)."""
    labels: Path | None = None
    """The trust's segmentation labels (``<accession>/mask.nii.gz``), attached to studies that have one."""

    def study_key(self, accession: str) -> str:
        """The pseudonymous name a study is stored under (the accession id itself never is)."""
        return self.deid.pseudonym("accession", accession)

    async def run(self, project_id: uuid.UUID, accessions: Iterable[str], *, to_nifti: bool) -> None:
        """Queue the accessions (already queued ones are left alone) and work until none is QUEUED."""
        self.ledger.enqueue(project_id, accessions)
        await asyncio.gather(*(self._worker(project_id, to_nifti) for _ in range(self.parallel)))

    async def _worker(self, project_id: uuid.UUID, to_nifti: bool) -> None:
        while claimed := self.ledger.claim(project_id, 1):
            await asyncio.to_thread(self.import_study, project_id, claimed[0].accession, to_nifti)

    def import_study(self, project_id: uuid.UUID, accession: str, to_nifti: bool) -> StudyState:
        """Import one claimed (RETRIEVING) study; returns where it ended."""
        staging = self.store.staging()
        try:
            self._import(project_id, accession, to_nifti, staging)
        except StudyFailed as exc:
            self.ledger.advance(project_id, accession, StudyState.FAILED, reason=exc.reason)
            log.info("study failed", extra={"project_id": str(project_id), "reason": exc.reason.value})
            return StudyState.FAILED
        except Exception:
            log.exception("unexpected error importing a study", extra={"project_id": str(project_id)})
            self.ledger.advance(project_id, accession, StudyState.FAILED, reason=StudyFailure.INTERNAL_ERROR)
            return StudyState.FAILED
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.ledger.advance(project_id, accession, StudyState.READY)
        return StudyState.READY

    def _import(self, project_id: uuid.UUID, accession: str, to_nifti: bool, staging: Path) -> None:
        raw = staging / "raw"
        try:
            match = self.pacs.find_study(accession)
            self.pacs.retrieve(match.study_uid, raw)
        except InvalidAccession as exc:
            raise StudyFailed(StudyFailure.INVALID_ACCESSION) from exc
        except AmbiguousAccession as exc:
            raise StudyFailed(StudyFailure.AMBIGUOUS) from exc
        except StudyNotFound as exc:
            raise StudyFailed(StudyFailure.NOT_FOUND) from exc
        except PacsUnavailable as exc:
            raise StudyFailed(StudyFailure.PACS_UNAVAILABLE) from exc
        except RetrieveFailed as exc:
            raise StudyFailed(StudyFailure.RETRIEVE_FAILED) from exc
        series = self._deidentify(raw, staging / "dicom")
        shutil.rmtree(raw)  # nothing identifying is left once de-identification succeeded
        if to_nifti:
            self.ledger.advance(project_id, accession, StudyState.CONVERTING)
            for folder in series:
                try:
                    convert_to_nifti(folder, staging / "nifti", timeout_s=self.convert_timeout_s, name=folder.name)
                except ConversionError as exc:
                    raise StudyFailed(StudyFailure.CONVERSION_FAILED) from exc
        shutil.rmtree(staging / "deid", ignore_errors=True)
        if self.labels is not None and (mask := find_mask(self.labels, accession)) is not None:
            try:
                copy_mask(mask, staging / "mask" / MASK_NAME)
            except BadMask as exc:
                # A study whose label is broken would break training later: fail it now, with a reason.
                raise StudyFailed(StudyFailure.CORRUPT) from exc
        try:
            # Only dicom/, nifti/ and mask/ are left in the staging folder; it becomes the study in one move.
            self.store.commit(project_id, self.study_key(accession), staging)
        except DamagedStudy as exc:
            raise StudyFailed(StudyFailure.INTERNAL_ERROR) from exc

    def _deidentify(self, raw: Path, out: Path) -> list[Path]:
        """De-identify every retrieved instance into ``out/<new series UID>/``; returns the series folders."""
        files = list(iter_dicom_files(raw)) if raw.exists() else []
        if not files:
            raise StudyFailed(StudyFailure.RETRIEVE_FAILED)
        scratch = out.parent / "deid"
        try:
            if self.deid_pool is not None:
                written_files = list(self.deid_pool.map(self.deid.file, files, itertools.repeat(scratch)))
            else:
                written_files = [self.deid.file(path, scratch) for path in files]
        except DeidError as exc:
            raise StudyFailed(StudyFailure.CORRUPT) from exc
        series: set[Path] = set()
        for written in written_files:
            series_uid = str(pydicom.dcmread(written, stop_before_pixels=True).SeriesInstanceUID)
            folder = out / series_uid
            folder.mkdir(parents=True, exist_ok=True)
            written.rename(folder / written.name)
            series.add(folder)
        return sorted(series)
