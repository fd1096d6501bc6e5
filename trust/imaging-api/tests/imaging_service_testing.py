"""A whole trust's imaging side for tests: OMOP data with imaging, a frozen cohort, a seeded PACS.

:func:`imaging_world` builds, once per module: an embedded PostgreSQL with synthetic OMOP data (read
through the read-only role), the data-access-api's :class:`CohortService` with an approved project's
cohort frozen (its query returns ``accession_id``), and an :class:`EmbeddedPacs` seeded with the
synthetic studies of exactly those accession ids (their organ masks in a labels folder).  Nothing is
faked: the imaging-api under test asks the real data-access-api, which asks the real gate.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from flip_core.cohort import PersistCohortPayload
from flip_core.embedded_pg import throwaway_server
from flip_data_access.app import create_app as data_access_app
from flip_data_access.gate import DisclosureGate
from flip_data_access.omop import OmopDatabase
from flip_data_access.service import CohortService
from flip_data_access.snapshot import SnapshotStore
from flip_imaging.cohort_link import CohortLink
from flip_imaging.deid import Deidentifier
from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.importer import StudyImporter
from flip_imaging.pacs import PacsClient
from flip_imaging.service import ImagingService
from flip_imaging.store import ImageStore
from flip_imaging.studies import StudyLedger
from flip_imaging.synthetic import SyntheticStudy, write_studies
from flip_omop import get_profile, image_occurrences
from flip_omop.loader import load_synthetic
from flip_omop.schema import create_readonly_role

PROFILE, PERSONS, SEED = "north", 150, 17
STUDIES = 16
"""The cohort is the persons of the first STUDIES imaging studies (more than k = 10 of them)."""
INTERNAL_KEY = "imaging-tests-internal-key-0123456789"
COHORT_SQL = (
    "SELECT p.person_id, i.accession_id, i.modality_source_value FROM person p "
    f"JOIN image_occurrence i ON i.person_id = p.person_id WHERE i.image_occurrence_id <= {STUDIES}"
)


@dataclass
class ImagingWorld:
    omop_reader_dsn: str
    pacs: EmbeddedPacs
    labels: Path
    studies: list[SyntheticStudy]

    @property
    def persons(self) -> int:
        """Distinct persons behind the studies (what the gate counts)."""
        occurrences = itertools.islice(image_occurrences(get_profile(PROFILE), PERSONS, SEED), STUDIES)
        return len({o.person_id for o in occurrences})

    @property
    def accessions(self) -> list[str]:
        return [s.accession for s in self.studies]

    def pacs_client(self) -> PacsClient:
        return PacsClient(self.pacs.host, self.pacs.port, self.pacs.ae_title, calling_ae_title="FLIPTRUST")


@contextlib.contextmanager
def imaging_world(root: Path) -> Iterator[ImagingWorld]:
    with throwaway_server("flip-imaging-tests-") as server:
        with psycopg.connect(server.libpq_dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE omop")
        owner = server.libpq_dsn("omop")
        load_synthetic(owner, PERSONS, SEED, PROFILE)
        create_readonly_role(owner, "omop_reader", None)
        studies = write_studies(get_profile(PROFILE), PERSONS, SEED, root / "synthetic", limit=STUDIES)
        assert len(studies) == STUDIES
        with EmbeddedPacs(root / "pacs", ae_title="TESTPACS") as pacs:
            dsn = f"host={server.socket_dir} user=omop_reader dbname=omop"
            world = ImagingWorld(dsn, pacs, root / "synthetic", studies)
            world.pacs_client().store_folder(root / "synthetic")
            yield world


@contextlib.asynccontextmanager
async def data_access(world: ImagingWorld, state: Path, *, noise: int = 0) -> AsyncIterator[CohortService]:
    """The trust's data-access-api service (perturbation off unless asked, so counts can be asserted)."""
    service = CohortService(
        db=OmopDatabase(world.omop_reader_dsn, pool_size=2, statement_timeout_s=30),
        gate=DisclosureGate(10, noise),
        snapshots=SnapshotStore(state / "snapshots", max_bytes=10**8),
        seed=97531,
    )
    await service.db.open()
    try:
        yield service
    finally:
        await service.db.close()


async def approve(service: CohortService, project_id: uuid.UUID, sql: str = COHORT_SQL) -> None:
    """What a trust's approval does first: freeze the project's cohort (``persist_cohort``)."""
    await service.freeze(PersistCohortPayload(project_id=project_id, query_id=uuid.uuid4(), version=1, sql=sql))


def imaging_service(
    world: ImagingWorld,
    state: Path,
    cohorts: CohortService,
    *,
    pacs: PacsClient | None = None,
    parallel: int = 2,
) -> ImagingService:
    """An imaging service whose data-access-api is the real app, called in process over ASGI."""
    importer = StudyImporter(
        ledger=StudyLedger(state / "studies.sqlite3"),
        store=ImageStore(state / "images"),
        pacs=pacs or world.pacs_client(),
        deid=Deidentifier(b"imaging-tests-secret-0123456789abcdef"),
        parallel=parallel,
        labels=world.labels,
    )
    transport = httpx.ASGITransport(app=data_access_app(cohorts, INTERNAL_KEY))
    link = CohortLink("http://data-access", INTERNAL_KEY, timeout_s=30, transport=transport)
    return ImagingService(importer, link, expire_interval_s=0.2)
