"""An imaging service over a store that already holds finished imports, for tests of what trainers read.

No PACS and no conversion: :func:`plant_ready_study` writes what a finished import leaves behind (the
project's import opened, the study READY in the ledger, its files committed to the store with their
manifest) through the ledger's and store's own methods, so the service serves them exactly as it
serves imported studies.  The fl trainer SDK's tests use it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

from flip_core.imaging import StudyState
from flip_imaging.cohort_link import CohortLink
from flip_imaging.deid import Deidentifier
from flip_imaging.importer import StudyImporter
from flip_imaging.pacs import PacsClient
from flip_imaging.service import ImagingService
from flip_imaging.store import ImageStore
from flip_imaging.studies import StudyLedger

INTERNAL_KEY = "imaging-store-tests-internal-key-0123"
UNUSED_PACS_PORT = 9  # the discard port: nothing here ever calls the PACS


def store_service(state: Path, data_access_url: str = "http://127.0.0.1:9") -> ImagingService:
    """An imaging service on ``state`` whose PACS is never called (its studies are planted)."""
    state.mkdir(parents=True, exist_ok=True)
    importer = StudyImporter(
        ledger=StudyLedger(state / "studies.sqlite3"),
        store=ImageStore(state / "images"),
        pacs=PacsClient("127.0.0.1", UNUSED_PACS_PORT, "NOPACS", calling_ae_title="FLIPTRUST"),
        deid=Deidentifier(b"imaging-store-tests-secret-0123456789"),
    )
    return ImagingService(importer, CohortLink(data_access_url, INTERNAL_KEY, timeout_s=5), expire_interval_s=30)


def plant_ready_study(
    service: ImagingService, project_id: uuid.UUID, accession: str, files: Mapping[str, bytes]
) -> None:
    """Leave ``accession`` READY in ``project_id``'s import with ``files`` (``<kind>/<name>`` → bytes)."""
    ledger, store = service.ledger, service.importer.store
    if ledger.import_record(project_id) is None:
        ledger.open_import(project_id, to_nifti=True)
    ledger.enqueue(project_id, [accession])
    ledger.advance(project_id, accession, StudyState.RETRIEVING)
    staged = store.staging()
    for name, data in files.items():
        path = staged.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    store.commit(project_id, service.importer.study_key(accession), staged)
    ledger.advance(project_id, accession, StudyState.READY)
