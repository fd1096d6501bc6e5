"""One trust's imaging service: imports of approved projects' studies, their gated status, and the images.

:class:`ImagingService` is what the HTTP routes (:mod:`flip_imaging.app`) call.  It owns

* the **imports**: ``create`` takes the accession ids of the project's frozen cohort from the
  data-access-api, queues them in the :class:`~flip_imaging.studies.StudyLedger` and starts a runner that
  works through them ``parallel`` at a time with the :class:`~flip_imaging.importer.StudyImporter`;
  ``reimport`` re-queues the FAILED ones; ``delete`` stops the runner, waits for the studies in flight,
  and removes every image of the project.  Runners survive nothing: at start the service re-queues what a
  dead process left half done and resumes every import with studies still QUEUED;
* the **status**: per-state and per-reason groups of accession ids are sent to the data-access-api,
  whose disclosure gate turns them into counts of distinct persons (``suppressed`` below k); no count is
  made here.  Deadlines are enforced before every status and on a timer, so no study waits for ever;
* the **images** for this trust's FL trainers: the files of a READY study, by accession id, after the
  study's manifest was verified against its files once (then cached until the study changes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flip_core.cohort import GatedCount
from flip_core.imaging import (
    CreateImagingPayload,
    FailureCount,
    ImagingErrorCode,
    ImagingStatus,
    StudyFailure,
    StudyState,
)
from flip_imaging.cohort_link import CohortLink
from flip_imaging.importer import StudyImporter
from flip_imaging.pacs import InvalidAccession, validate_accession
from flip_imaging.store import KINDS, MANIFEST, DamagedStudy, Manifest, StudyNotInStore, UnsafePath, safe_segment
from flip_imaging.studies import ImportRecord, InvalidStudyTransition, StudyLedger

log = logging.getLogger(__name__)

ALL = "all"
MANIFEST_CACHE_SIZE = 4096


class ImagingError(Exception):
    """A request the service cannot do, in a category safe to pass on; ``status`` is the HTTP status."""

    def __init__(self, code: ImagingErrorCode | str, detail: str, *, status: int, retryable: bool = False) -> None:
        super().__init__(detail)
        self.code = code.value if isinstance(code, ImagingErrorCode) else code
        self.detail = detail
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True)
class StoredFile:
    """One served file of a study: its name within the study (``<kind>/<file>``), size and sha256."""

    name: str
    kind: str
    bytes: int
    sha256: str
    path: Path


@dataclass
class _Runner:
    task: asyncio.Task[None]
    stopping: bool = False


@dataclass
class ImagingService:
    """Imports, status and images of every project at one trust."""

    importer: StudyImporter
    cohorts: CohortLink
    expire_interval_s: float = 30.0
    _runners: dict[uuid.UUID, _Runner] = field(default_factory=dict, init=False)
    _verified: OrderedDict[tuple[uuid.UUID, str], tuple[tuple[int, int], Manifest]] = field(
        default_factory=OrderedDict, init=False
    )
    _expiry: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def ledger(self) -> StudyLedger:
        return self.importer.ledger

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Resume what a previous process left: half-done studies are re-queued, queued imports restart."""
        requeued = self.ledger.requeue_interrupted()
        resumed = self.ledger.queued_imports()
        for record in resumed:
            self._ensure_runner(record.project_id, record.to_nifti)
        if requeued or resumed:
            log.info("imports resumed", extra={"projects": len(resumed), "requeued_studies": requeued})
        self._expiry = asyncio.create_task(self._expire_forever(), name="imaging-expiry")

    async def stop(self) -> None:
        """Stop taking new studies and wait for the ones in flight (each ends READY or FAILED)."""
        if self._expiry is not None:
            self._expiry.cancel()
        for runner in self._runners.values():
            runner.stopping = True
        await asyncio.gather(*(r.task for r in list(self._runners.values())), return_exceptions=True)
        self.ledger.close()

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self.expire_interval_s)
            try:
                if expired := self.ledger.expire():
                    log.warning("studies outstayed a deadline and failed", extra={"studies": expired})
            except Exception:
                log.exception("enforcing study deadlines failed; trying again later")

    # ---------------------------------------------------------------- runners

    def _ensure_runner(self, project_id: uuid.UUID, to_nifti: bool) -> None:
        runner = self._runners.get(project_id)
        if runner is not None and not runner.stopping and not runner.task.done():
            return
        task = asyncio.create_task(self._run(project_id, to_nifti), name=f"imaging-import-{project_id}")
        self._runners[project_id] = _Runner(task)
        task.add_done_callback(lambda done: self._runner_done(project_id, to_nifti, done))

    def _runner_done(self, project_id: uuid.UUID, to_nifti: bool, task: asyncio.Task[None]) -> None:
        runner = self._runners.get(project_id)
        if runner is None or runner.task is not task:
            return
        del self._runners[project_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("an import runner failed", extra={"project_id": str(project_id)}, exc_info=exc)
        if runner.stopping:
            return
        # Studies queued after the runner's last claim (a re-import racing its end) need a runner too.
        if self.ledger.counts(project_id)[StudyState.QUEUED]:
            self._ensure_runner(project_id, to_nifti)

    async def _run(self, project_id: uuid.UUID, to_nifti: bool) -> None:
        async def worker() -> None:
            runner = self._runners.get(project_id)
            while runner is not None and not runner.stopping:
                claimed = self.ledger.claim(project_id, 1)
                if not claimed:
                    return
                try:
                    await asyncio.to_thread(self.importer.import_study, project_id, claimed[0].accession, to_nifti)
                except InvalidStudyTransition:
                    # The study outstayed a deadline while it was being imported: it is FAILED already.
                    log.warning("a study finished after its deadline", extra={"project_id": str(project_id)})

        await asyncio.sleep(0)  # let _ensure_runner register this runner before the workers look it up
        await asyncio.gather(*(worker() for _ in range(self.importer.parallel)))

    async def _stop_runner(self, project_id: uuid.UUID) -> None:
        runner = self._runners.get(project_id)
        if runner is not None:
            runner.stopping = True
            await asyncio.gather(runner.task, return_exceptions=True)

    def running(self, project_id: uuid.UUID) -> bool:
        runner = self._runners.get(project_id)
        return runner is not None and not runner.task.done()

    # ---------------------------------------------------------------- imports

    async def create(self, payload: CreateImagingPayload) -> ImagingStatus:
        """Import the studies of the project's frozen cohort (idempotent: known studies are left as they are)."""
        accessions = await self.cohorts.accession_ids(payload.project_id)
        try:
            self.ledger.open_import(payload.project_id, to_nifti=payload.dicom_to_nifti)
        except ValueError as exc:
            raise ImagingError("conflict", str(exc), status=409) from exc
        added = self.ledger.enqueue(payload.project_id, accessions)
        log.info("import queued", extra={"project_id": str(payload.project_id), "new_studies": added})
        self._ensure_runner(payload.project_id, payload.dicom_to_nifti)
        return await self.status(payload.project_id, payload.min_k)

    async def reimport(self, project_id: uuid.UUID, min_k: int) -> ImagingStatus:
        """Queue every FAILED study of the project again."""
        record = self._live_import(project_id)
        requeued = self.ledger.reimport(project_id)
        log.info("re-import queued", extra={"project_id": str(project_id), "studies": requeued})
        if requeued:
            self._ensure_runner(project_id, record.to_nifti)
        return await self.status(project_id, min_k)

    async def delete(self, project_id: uuid.UUID, min_k: int) -> ImagingStatus:
        """Remove every image of the project (after the studies in flight finish); idempotent."""
        if self.ledger.import_record(project_id) is None:
            raise self._not_imported()
        await self._stop_runner(project_id)
        studies = self.ledger.forget(project_id)
        removed = self.importer.store.delete_project(project_id)
        for key in [k for k in self._verified if k[0] == project_id]:
            del self._verified[key]
        log.info("images deleted", extra={"project_id": str(project_id), "studies": studies, "stored": removed})
        return await self.status(project_id, min_k)

    def _live_import(self, project_id: uuid.UUID) -> ImportRecord:
        record = self.ledger.import_record(project_id)
        if record is None or record.deleted_at is not None:
            raise self._not_imported()
        return record

    @staticmethod
    def _not_imported() -> ImagingError:
        detail = "this trust has no imaging import for the project"
        return ImagingError(ImagingErrorCode.NOT_IMPORTED, detail, status=404)

    # ---------------------------------------------------------------- status

    async def status(self, project_id: uuid.UUID, min_k: int) -> ImagingStatus:
        """Where the project's import stands, in counts made by the disclosure gate only."""
        record = self.ledger.import_record(project_id)
        if record is None:
            raise self._not_imported()
        now = datetime.now(UTC)
        if record.deleted_at is not None:
            # Nothing is left to count: every count is a true zero, which the gate would suppress anyway.
            nothing = GatedCount(value=None, suppressed=True)
            return ImagingStatus(
                project_id=project_id,
                k=min_k,
                studies=nothing,
                by_state=dict.fromkeys(StudyState, nothing),
                failures=[],
                complete=True,
                deleted=True,
                updated_at=now,
            )
        self.ledger.expire()
        studies = self.ledger.accessions(project_id)
        groups: dict[str, list[str]] = {ALL: list(studies)}
        for state in StudyState:
            groups[f"state:{state.value}"] = [a for a, (s, _) in studies.items() if s is state]
        for reason in StudyFailure:  # every reason is asked, so which ones are present is not disclosed
            groups[f"failure:{reason.value}"] = [a for a, (_, r) in studies.items() if r is reason]
        k, counts = await self.cohorts.study_counts(project_id, groups, min_k)
        return ImagingStatus(
            project_id=project_id,
            k=k,
            studies=counts[ALL],
            by_state={state: counts[f"state:{state.value}"] for state in StudyState},
            failures=[
                FailureCount(reason=reason, count=count)
                for reason in StudyFailure
                if not (count := counts[f"failure:{reason.value}"]).suppressed
            ],
            complete=all(state.terminal for state, _ in studies.values()),
            updated_at=now,
        )

    # ---------------------------------------------------------------- images

    def files(self, project_id: uuid.UUID, accession: str, kind: str) -> list[StoredFile]:
        """The files of one kind of a READY study (``dicom``, ``nifti`` or ``mask``)."""
        if kind not in KINDS:
            raise ImagingError("invalid_kind", f"kind must be one of {', '.join(KINDS)}", status=422)
        key, manifest = self._verified_study(project_id, accession)
        folder = self.importer.store.study_dir(project_id, key)
        return [
            StoredFile(name, kind, size, digest, folder / name)
            for name, (size, digest) in sorted(manifest.files.items())
            if name.startswith(f"{kind}/")
        ]

    def file(self, project_id: uuid.UUID, accession: str, kind: str, name: str) -> StoredFile:
        """One file of a READY study by kind and name within the kind; only files in its manifest can be named."""
        try:
            for segment in name.split("/"):
                safe_segment(segment)
        except UnsafePath as exc:
            raise ImagingError("invalid_name", str(exc), status=422) from exc
        for stored in self.files(project_id, accession, kind):
            if stored.name == f"{kind}/{name}":
                return stored
        raise ImagingError("not_found", "no such file in the study", status=404)

    def _verified_study(self, project_id: uuid.UUID, accession: str) -> tuple[str, Manifest]:
        try:
            accession = validate_accession(accession)
        except InvalidAccession as exc:
            raise ImagingError("invalid_accession", str(exc), status=422) from exc
        if self.ledger.import_record(project_id) is None:
            raise self._not_imported()
        try:
            study = self.ledger.get(project_id, accession)
        except InvalidStudyTransition as exc:
            raise ImagingError("not_found", "no such study in this project's import", status=404) from exc
        if study.state is not StudyState.READY:
            raise ImagingError("study_not_ready", f"the study is {study.state.value}, not READY", status=409)
        key = self.importer.study_key(accession)
        store = self.importer.store
        try:
            stat = os.stat(store.study_dir(project_id, key) / MANIFEST)
        except FileNotFoundError as exc:
            raise ImagingError("not_found", "the study's images are missing from the store", status=404) from exc
        version = (stat.st_ino, stat.st_mtime_ns)  # a re-import replaces the folder: a new inode
        cached = self._verified.get((project_id, key))
        if cached is not None and cached[0] == version:
            self._verified.move_to_end((project_id, key))
            return key, cached[1]
        try:
            manifest = store.verify(project_id, key)
        except StudyNotInStore as exc:
            raise ImagingError("not_found", "the study's images are missing from the store", status=404) from exc
        except DamagedStudy as exc:
            log.error("a stored study no longer matches its manifest", extra={"project_id": str(project_id)})
            # It is not READY any more: failing it lets a re-import bring it back.
            self.ledger.advance(project_id, accession, StudyState.FAILED, reason=StudyFailure.CORRUPT)
            detail = "the study's stored files are damaged; it failed and a re-import will fetch it again"
            raise ImagingError("damaged_study", detail, status=409) from exc
        self._verified[(project_id, key)] = (version, manifest)
        while len(self._verified) > MANIFEST_CACHE_SIZE:
            self._verified.popitem(last=False)
        return key, manifest
