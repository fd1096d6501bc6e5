"""Fixtures for the OMOP database tests: a real PostgreSQL server and fresh databases on it.

``DATABASE_URL`` (a server URL; its database part is ignored) selects an external server;
otherwise an embedded server is started in a temporary directory for the session.  Roles are
cluster-wide, so tests that create roles name them uniquely and drop them afterwards.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from flip_core.embedded_pg import throwaway_server
from flip_omop import LoadSummary, load_synthetic

Db = psycopg.Connection[tuple[object, ...]]
LOADED_PERSONS = 20_000


def _server_conninfo(url: str) -> str:
    # Accept SQLAlchemy-style URLs (postgresql+psycopg://…) as the other suites do.
    return re.sub(r"^postgres(ql)?(\+psycopg2?)?://", "postgresql://", url)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """libpq connection string for the test server's ``postgres`` database (a superuser)."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield make_conninfo(_server_conninfo(external), dbname="postgres")
        return
    with throwaway_server("flip-omop-test-pg-") as server:
        yield server.libpq_dsn("postgres")


@pytest.fixture(scope="session")
def new_database(pg_server: str) -> Iterator[Callable[[], str]]:
    """Factory: create an empty database and return its conninfo (all dropped at session end)."""
    created: list[str] = []

    def create() -> str:
        name = f"flip_omop_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return make_conninfo(pg_server, dbname=name)

    yield create
    with psycopg.connect(pg_server, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def omop_db(new_database: Callable[[], str]) -> str:
    """An empty database for one test."""
    return new_database()


@pytest.fixture
def role_name(pg_server: str) -> Iterator[str]:
    """A unique role name, dropped (with whatever it owns or was granted) after the test."""
    name = f"flip_reader_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        if not exists:
            return
        databases = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND datname LIKE 'flip_omop_%%'"
        ).fetchall()
    for (database,) in databases:
        with psycopg.connect(make_conninfo(pg_server, dbname=database), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def loaded(new_database: Callable[[], str]) -> dict[str, tuple[str, LoadSummary]]:
    """One database per built-in profile, each loaded once with the same size and seed."""
    result: dict[str, tuple[str, LoadSummary]] = {}
    for profile in ("north", "south", "east"):
        conninfo = new_database()
        result[profile] = (conninfo, load_synthetic(conninfo, LOADED_PERSONS, 11, profile))
    return result


@pytest.fixture
def north(loaded: dict[str, tuple[str, LoadSummary]]) -> Iterator[Db]:
    """A superuser connection to the loaded ``north`` database."""
    with psycopg.connect(loaded["north"][0], autocommit=True) as conn:
        yield conn
