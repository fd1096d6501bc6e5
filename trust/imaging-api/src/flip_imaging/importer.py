"""Importing a project's studies: find → retrieve → de-identify → (convert) → store, one study at a time,
several studies at once, every step recorded in the :class:`~flip_imaging.studies.StudyLedger`.

A study ends READY (its de-identified files, and NIfTI volumes when the project asked for them, are in
the research store under a pseudonymous study key) or FAILED with a :class:`~flip_core.imaging.StudyFailure`
reason; one bad study never stops the others.  Instances from the PACS are de-identified as they arrive,
in memory, and only the de-identified files are written (to a staging folder inside the store that becomes
the study in one move), so nothing identifying ever reaches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from flip_core.imaging import StudyFailure, StudyState
from flip_imaging.deid import DeidentifiedFile, Deidentifier, DeidError, is_image
from flip_imaging.labels import MASK_NAME, BadMask, copy_mask, find_mask
from flip_imaging.nifti import ConversionError, convert_to_nifti
from flip_imaging.pacs import (
    AmbiguousAccession,
    InvalidAccession,
    PacsClient,
    PacsUnavailable,
    RetrieveFailed,
    StudyNotFound,
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
class StageTimes:
    """Wall-clock seconds spent in each import stage, summed over studies (studies in flight at once add up).

    Stages: ``find`` (C-FIND), ``retrieve`` (C-GET), ``deid``, ``convert`` (dcm2niix and its checks) and
    ``store`` (label copy and checksummed commit). For benchmarks and operators; costs two clock reads a stage.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to ``seconds[name]`` (from any thread)."""
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time the ``with`` block takes to ``seconds[name]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)


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
    """Worker processes that retrieve and de-identify studies, one study per task (CPU-bound Python: threads
    would share one core). Without it, that happens in the importer's own threads."""
    labels: Path | None = None
    """The trust's segmentation labels (``<accession>/mask.nii.gz``), attached to studies that have one."""
    stage_times: StageTimes | None = None
    """When set, every stage's duration is added to it (see :class:`StageTimes`)."""

    def _stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self.stage_times.stage(name) if self.stage_times is not None else contextlib.nullcontext()

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
        staging = staging.absolute()  # the same paths in a worker process, whatever its working directory
        written = self._retrieve_deidentified(accession, staging / "dicom")
        # Checksums of what we wrote, taken from the bytes as they were written: the store need not read them.
        checksums = {f.path: (f.size, f.sha256) for f in written}
        if to_nifti:
            self.ledger.advance(project_id, accession, StudyState.CONVERTING)
            with self._stage("convert"):
                for folder in sorted({f.path.parent for f in written}):
                    try:
                        converted = convert_to_nifti(
                            folder, staging / "nifti", timeout_s=self.convert_timeout_s, name=folder.name
                        )
                    except ConversionError as exc:
                        raise StudyFailed(StudyFailure.CONVERSION_FAILED) from exc
                    checksums.update({f.path: (f.size, f.sha256) for f in converted.files})
        with self._stage("store"):
            if self.labels is not None and (mask := find_mask(self.labels, accession)) is not None:
                try:
                    copy_mask(mask, staging / "mask" / MASK_NAME)
                except BadMask as exc:
                    # A study whose label is broken would break training later: fail it now, with a reason.
                    raise StudyFailed(StudyFailure.CORRUPT) from exc
            try:
                # Only dicom/, nifti/ and mask/ are in the staging folder; it becomes the study in one move.
                self.store.commit(project_id, self.study_key(accession), staging, checksums=checksums)
            except DamagedStudy as exc:
                raise StudyFailed(StudyFailure.INTERNAL_ERROR) from exc

    def _retrieve_deidentified(self, accession: str, out: Path) -> list[DeidentifiedFile]:
        """Find the study and C-GET it, de-identifying each instance into ``out/<new series UID>/`` as it arrives.

        The PACS's originals exist only in memory, one instance at a time; only de-identified files are
        written. With a ``deid_pool`` all of it runs in one of the pool's processes: receiving and
        de-identifying are CPU-bound Python, and a process per study in flight keeps them from sharing one
        interpreter lock, while no instance has to cross from one process to another.
        """
        if self.deid_pool is None:
            outcome = retrieve_deidentified(self.pacs, self.deid, accession, out)
        else:
            outcome = self.deid_pool.submit(retrieve_deidentified, self.pacs, self.deid, accession, out).result()
        if self.stage_times is not None:
            for name, seconds in outcome.seconds.items():
                self.stage_times.add(name, seconds)
        if outcome.failure is not None:
            raise StudyFailed(outcome.failure)
        return list(outcome.files)


@dataclass(frozen=True)
class Retrieved:
    """What :func:`retrieve_deidentified` did: the files written, or why the study failed; seconds per stage."""

    files: tuple[DeidentifiedFile, ...] = ()
    failure: StudyFailure | None = None
    seconds: dict[str, float] = field(default_factory=dict)


# Failures of finding, retrieving or de-identifying a study, and the reason each is reported with.
_RETRIEVE_FAILURES: tuple[tuple[type[Exception], StudyFailure], ...] = (
    (DeidError, StudyFailure.CORRUPT),
    (InvalidAccession, StudyFailure.INVALID_ACCESSION),
    (AmbiguousAccession, StudyFailure.AMBIGUOUS),
    (StudyNotFound, StudyFailure.NOT_FOUND),
    (PacsUnavailable, StudyFailure.PACS_UNAVAILABLE),
    (RetrieveFailed, StudyFailure.RETRIEVE_FAILED),
)


def retrieve_deidentified(pacs: PacsClient, deid: Deidentifier, accession: str, out: Path) -> Retrieved:
    """Find ``accession`` on the PACS and C-GET it, each instance de-identified into ``out`` as it arrives.

    Runs in the importer's thread or in a worker process (everything it takes and returns pickles);
    expected failures come back as a reason, anything else is raised.
    """
    written: list[DeidentifiedFile] = []
    skipped = 0
    seconds = {"find": 0.0, "retrieve": 0.0, "deid": 0.0}

    def deidentify(ds: Dataset) -> None:
        nonlocal skipped
        if not is_image(ds):
            skipped += 1  # a dose report, key object or presentation state: not part of any volume, not kept
            return
        started = time.perf_counter()
        try:
            written.append(deid.write(ds, out, series_folders=True))
        finally:
            seconds["deid"] += time.perf_counter() - started

    failure: StudyFailure | None = None
    stage, started = "find", time.perf_counter()
    try:
        match = pacs.find_study(accession)
        seconds["find"] = time.perf_counter() - started
        stage, started = "retrieve", time.perf_counter()
        result = pacs.retrieve(match.study_uid, out.parent / "raw", sink=deidentify)  # "raw" is never created
        if not result.complete or (match.instance_count is not None and result.received < match.instance_count):
            # Some instances did not arrive (a sub-operation failed, or fewer came than the PACS counted): a
            # volume with missing slices must not become READY; a re-import fetches the study again.
            log.warning(
                "incomplete retrieve: %d of %s instances, %d failed, status %s",
                result.received,
                match.instance_count if match.instance_count is not None else "?",
                result.failed,
                f"0x{result.status:04X}" if result.status is not None else "none",
            )
            failure = StudyFailure.RETRIEVE_FAILED
    except Exception as exc:
        failure = next((reason for kind, reason in _RETRIEVE_FAILURES if isinstance(exc, kind)), None)
        if failure is None:
            raise
    finally:
        # The C-GET's time is less what de-identifying took meanwhile.
        seconds[stage] = time.perf_counter() - started - (seconds["deid"] if stage == "retrieve" else 0.0)
    if failure is None and not written:
        # Everything arrived, but none of it was an image.
        failure = StudyFailure.CORRUPT if skipped else StudyFailure.RETRIEVE_FAILED
    if failure is not None:
        return Retrieved(failure=failure, seconds=seconds)
    return Retrieved(files=tuple(written), seconds=seconds)
