"""Fixtures for the trainer SDK: a clean SDK state per test, and a trust's real data services on 127.0.0.1.

:func:`trust` serves, each with uvicorn in a thread of its own (the SDK's calls are synchronous):

* the real data-access-api over an embedded PostgreSQL holding a small OMOP dataset (20 persons with a
  CT study each), with one approved project's cohort frozen through its own ``/cohort/snapshot`` route;
* the real imaging-api over a store holding one READY study of that cohort (a small NIfTI volume and
  its mask), planted with the imaging tests' helper, with every request's path and status recorded.

Both apps accept the trainer key :data:`TRAINER_KEY`, as a trust sets it with ``FLIP_TRAINER_KEY``.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import psycopg
import pytest
import uvicorn
from data_access_testing import make_service
from fastapi import FastAPI, Request, Response
from imaging_store_testing import plant_ready_study, store_service

import flip.context
from flip_core.contract import INTERNAL_KEY_HEADER
from flip_core.embedded_pg import throwaway_server
from flip_data_access.app import create_app as data_access_app
from flip_imaging.app import create_app as imaging_app

INTERNAL_KEY = "sdk-tests-internal-key-0123456789"
TRAINER_KEY = "sdk-tests-trainer-key-0123456789"
PERSONS = 20
ACCESSION = "ACC3-CT"
DDL = f"""
CREATE SCHEMA omop;
CREATE TABLE omop.person (person_id bigint PRIMARY KEY, gender_concept_id integer NOT NULL, year_of_birth integer);
CREATE TABLE omop.image_occurrence (
    image_occurrence_id bigserial PRIMARY KEY, person_id bigint NOT NULL, accession_id text UNIQUE,
    modality_source_value text, image_occurrence_date date
);
INSERT INTO omop.person SELECT i, 8532, 1950 + i FROM generate_series(1, {PERSONS}) AS i;
INSERT INTO omop.image_occurrence (person_id, accession_id, modality_source_value, image_occurrence_date)
    SELECT i, 'ACC' || i || '-CT', 'CT', date '2023-01-01' + i FROM generate_series(1, {PERSONS}) AS i;
"""
COHORT_SQL = (
    "SELECT p.person_id, p.year_of_birth, i.accession_id FROM person p "
    "JOIN image_occurrence i ON i.person_id = p.person_id"
)


@pytest.fixture(autouse=True)
def clean_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No local-dev mode or trust settings leak in from the environment or from another test."""
    for name in ("FLIP_DEV_DATAFRAME", "FLIP_DEV_IMAGES", "FLIP_DATA_ACCESS_URL", "FLIP_IMAGING_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FLIP_TRAINER_KEY", raising=False)
    monkeypatch.delenv("FLIP_TRAINER_CACHE", raising=False)
    flip.context.reset()
    yield
    flip.context.reset()


def nifti_bytes(volume: np.ndarray) -> bytes:
    """``volume`` as a gzipped NIfTI-1 file."""
    image = nib.Nifti1Image(volume, np.eye(4))
    return gzip.compress(image.to_bytes(), mtime=0)


class _Quiet(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own signals
        return


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` on a free port of 127.0.0.1, served by uvicorn in its own thread (lifespan included)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Quiet(uvicorn.Config(app, log_config=None, lifespan="on", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the app did not start"
        assert time.monotonic() < deadline, "the app took too long to start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@dataclass
class Trust:
    """A trust's data services as the SDK reaches them, and what the imaging-api was asked."""

    project_id: uuid.UUID
    data_access_url: str
    imaging_url: str
    volume: bytes
    mask: bytes
    accession: str = ACCESSION
    persons: int = PERSONS
    trainer_key: str = TRAINER_KEY
    imaging_requests: list[tuple[str, int]] = field(default_factory=list)

    def supernode_env(self, monkeypatch: pytest.MonkeyPatch, cache: Path, *, key: str = TRAINER_KEY) -> None:
        """The environment a trust sets on its SuperNode for its trainers."""
        monkeypatch.setenv("FLIP_DATA_ACCESS_URL", self.data_access_url)
        monkeypatch.setenv("FLIP_IMAGING_URL", self.imaging_url)
        monkeypatch.setenv("FLIP_TRAINER_KEY", key)
        monkeypatch.setenv("FLIP_TRAINER_CACHE", str(cache))


@pytest.fixture(scope="module")
def omop_dsn() -> Iterator[str]:
    with throwaway_server("flip-sdk-tests-") as server:
        with psycopg.connect(server.libpq_dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE omop")
        with psycopg.connect(server.libpq_dsn("omop"), autocommit=True) as conn:
            conn.execute(DDL)
        yield server.libpq_dsn("omop")


@pytest.fixture(scope="module")
def trust(omop_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trust]:
    root = tmp_path_factory.mktemp("trust")
    project = uuid.uuid4()
    volume = nifti_bytes(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    mask = nifti_bytes((np.arange(4 * 5 * 6).reshape(4, 5, 6) % 2).astype(np.uint8))
    with serve(data_access_app(make_service(omop_dsn, root / "data-access"), INTERNAL_KEY, TRAINER_KEY)) as da_url:
        frozen = httpx.post(
            f"{da_url}/cohort/snapshot",
            headers={INTERNAL_KEY_HEADER: INTERNAL_KEY},
            json={"project_id": str(project), "query_id": str(uuid.uuid4()), "version": 1, "sql": COHORT_SQL},
            timeout=30,
        )
        assert frozen.status_code == 200, frozen.text
        imaging = store_service(root / "imaging", da_url)
        plant_ready_study(imaging, project, ACCESSION, {"nifti/ct.nii.gz": volume, "mask/mask.nii.gz": mask})
        app = imaging_app(imaging, INTERNAL_KEY, TRAINER_KEY)
        built = Trust(project, da_url, "", volume, mask)

        @app.middleware("http")
        async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            response = await call_next(request)
            built.imaging_requests.append((request.url.path, response.status_code))
            return response

        with serve(app) as imaging_url:
            built.imaging_url = imaging_url
            yield built
