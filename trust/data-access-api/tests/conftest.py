"""Fixtures for the data-access-api: a real PostgreSQL with a small, exactly known OMOP dataset, a
read-only role like the one a trust runs under, and the service over it.

The dataset (300 persons) is crafted so that every count in the tests can be worked out by hand:

* persons 1..300; ``person_id % 3 == 0`` are male (100), the rest female (200);
  ``year_of_birth = 1940 + person_id % 60``;
* condition 201826 (type 2 diabetes) for every ``person_id % 5 == 0`` (60 persons), twice for
  ``person_id % 10 == 0`` (two rows, one person); condition 4329847 for persons 1..4 only (4 persons);
* imaging: CT for ``person_id % 4 == 0`` (75), MR for ``person_id % 10 == 0`` (30, of whom 15 also have
  a CT), PT for persons 7 and 11 (2); accession ids ``ACC<person_id>-<modality>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from data_access_testing import make_service
from psycopg import sql

from flip_core.embedded_pg import EmbeddedPostgres, throwaway_server
from flip_data_access.service import CohortService

READER = "omop_reader_test"

DDL = """
CREATE SCHEMA omop;
CREATE TABLE omop.person (
    person_id bigint PRIMARY KEY, gender_concept_id integer NOT NULL, year_of_birth integer,
    gender_source_value text
);
CREATE TABLE omop.condition_occurrence (
    condition_occurrence_id bigserial PRIMARY KEY, person_id bigint NOT NULL, condition_concept_id integer NOT NULL,
    condition_start_date date NOT NULL
);
CREATE TABLE omop.image_occurrence (
    image_occurrence_id bigserial PRIMARY KEY, person_id bigint NOT NULL, accession_id text UNIQUE,
    modality_source_value text, image_occurrence_date date
);
CREATE TABLE omop.concept (concept_id integer PRIMARY KEY, concept_name text NOT NULL);
INSERT INTO omop.person
    SELECT i, CASE WHEN i % 3 = 0 THEN 8507 ELSE 8532 END, 1940 + i % 60, CASE WHEN i % 3 = 0 THEN 'M' ELSE 'F' END
    FROM generate_series(1, 300) AS i;
INSERT INTO omop.condition_occurrence (person_id, condition_concept_id, condition_start_date)
    SELECT i, 201826, date '2020-01-01' + i FROM generate_series(1, 300) AS i WHERE i % 5 = 0;
INSERT INTO omop.condition_occurrence (person_id, condition_concept_id, condition_start_date)
    SELECT i, 201826, date '2021-01-01' + i FROM generate_series(1, 300) AS i WHERE i % 10 = 0;
INSERT INTO omop.condition_occurrence (person_id, condition_concept_id, condition_start_date)
    SELECT i, 4329847, date '2022-01-01' + i FROM generate_series(1, 4) AS i;
INSERT INTO omop.image_occurrence (person_id, accession_id, modality_source_value, image_occurrence_date)
    SELECT i, 'ACC' || i || '-CT', 'CT', date '2023-01-01' + i FROM generate_series(1, 300) AS i WHERE i % 4 = 0;
INSERT INTO omop.image_occurrence (person_id, accession_id, modality_source_value, image_occurrence_date)
    SELECT i, 'ACC' || i || '-MR', 'MR', date '2023-06-01' + i FROM generate_series(1, 300) AS i WHERE i % 10 = 0;
INSERT INTO omop.image_occurrence (person_id, accession_id, modality_source_value, image_occurrence_date)
    VALUES (7, 'ACC7-PT', 'PT', date '2023-09-01'), (11, 'ACC11-PT', 'PT', date '2023-09-02');
INSERT INTO omop.concept VALUES (201826, 'Type 2 diabetes mellitus'), (4329847, 'Myocardial infarction');
CREATE TABLE public.person (person_id bigint, secret text);
INSERT INTO public.person VALUES (1, 'decoy: never readable through the service');
"""


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """Always an embedded server of their own: the tests create roles and databases on it."""
    with throwaway_server("flip-data-access-test-") as server:
        yield server


@pytest.fixture(scope="session")
def omop_dsn(pg: EmbeddedPostgres) -> str:
    """Connection string of the OMOP database as the read-only role."""
    with psycopg.connect(pg.libpq_dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE omop_test")
    with psycopg.connect(pg.libpq_dsn("omop_test"), autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(READER)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA omop TO {}").format(sql.Identifier(READER)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA omop TO {}").format(sql.Identifier(READER)))
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(READER)))
    return f"host={pg.socket_dir} user={READER} dbname=omop_test"


@pytest.fixture
def owner_dsn(pg: EmbeddedPostgres) -> str:
    """The OMOP database as its owner (for tests that change data)."""
    return pg.libpq_dsn("omop_test")


@pytest.fixture
async def exact(omop_dsn: str, tmp_path: Path) -> AsyncIterator[CohortService]:
    """The service with perturbation off, so tests can assert true counts."""
    service = make_service(omop_dsn, tmp_path)
    await service.db.open()
    try:
        yield service
    finally:
        await service.db.close()


@pytest.fixture
async def noisy(omop_dsn: str, tmp_path: Path) -> AsyncIterator[CohortService]:
    """The service as trusts run it: perturbation on."""
    service = make_service(omop_dsn, tmp_path, noise=2)
    await service.db.open()
    try:
        yield service
    finally:
        await service.db.close()
