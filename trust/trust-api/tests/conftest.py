"""Fixtures for the trust agent's tests: one real PostgreSQL per session, a migrated database and a
running hub per test that needs one.

``DATABASE_URL`` (a server URL; its database part is ignored) selects an external server; otherwise an
embedded server is started in a temporary directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from trust_testing import RunningHub, fast_hub_settings, free_port

from flip_api.db.session import libpq_conninfo, normalise_url, run_migrations
from flip_core.embedded_pg import throwaway_server

TEMPLATE_DB = f"flip_agent_tmpl_{os.getpid()}"


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """SQLAlchemy URL of the test server's ``postgres`` database."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield _with_database(normalise_url(external), "postgres")
        return
    with throwaway_server("flip-agent-test-pg-") as server:
        yield server.url("postgres")


def _admin(server_url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(libpq_conninfo(server_url), autocommit=True)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    with _admin(pg_server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    run_migrations(_with_database(pg_server_url, TEMPLATE_DB))
    yield TEMPLATE_DB
    with _admin(pg_server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated hub database for one test."""
    name = f"flip_agent_t_{uuid.uuid4().hex[:12]}"
    with _admin(pg_server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_database(pg_server_url, name)
    with _admin(pg_server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def hub(tmp_path: Path, db_url: str) -> AsyncIterator[RunningHub]:
    """The real hub, served over TCP on 127.0.0.1 (stopped at the end of the test)."""
    port = free_port()
    settings = fast_hub_settings(tmp_path / "hub-state", port)
    running = RunningHub(settings, db_url, port)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
