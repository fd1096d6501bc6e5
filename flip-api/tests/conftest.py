"""Test fixtures: one real PostgreSQL per session, a fresh migrated database per test.

``DATABASE_URL`` (a server URL; its database part is ignored) selects an external server; otherwise an
embedded server is started in a temporary directory.  Each test gets a database cloned from a
template that was migrated once, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from hub_testing import MakeUser, make_user_factory
from s3_testing import s3_endpoint as s3_endpoint  # the moto S3 server fixture, for every test module
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.config import HubSettings
from flip_api.core.state import HubState
from flip_api.db.session import libpq_conninfo, normalise_url, run_migrations
from flip_api.main import create_app
from flip_core.embedded_pg import throwaway_server

TEMPLATE_DB = f"flip_tmpl_{os.getpid()}"


@dataclass
class PgServer:
    base_url: str  # SQLAlchemy URL with database "postgres"

    def url(self, database: str) -> str:
        return make_url(self.base_url).set(database=database).render_as_string(hide_password=False)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(libpq_conninfo(self.url("postgres")), autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield PgServer(make_url(normalise_url(external)).set(database="postgres").render_as_string(False))
        return
    with throwaway_server("flip-test-pg-") as server:
        yield PgServer(server.url("postgres"))


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    with pg_server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    run_migrations(pg_server.url(TEMPLATE_DB))
    yield TEMPLATE_DB
    with pg_server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"flip_t_{uuid.uuid4().hex[:12]}"
    with pg_server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield pg_server.url(name)
    with pg_server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path: Path) -> HubSettings:
    return HubSettings(
        FLIP_STATE_DIR=tmp_path / "state",
        FLIP_JWT_SECRET="test-jwt-secret-" + uuid.uuid4().hex,
        FLIP_LOG_JSON=False,
        FLIP_RATE_LIMIT_LOGIN_PER_MIN=1000,
        FLIP_RATE_LIMIT_ACCESS_REQUEST_PER_MIN=1000,
        FLIP_RATE_LIMIT_USER_LOOKUP_PER_MIN=1000,
        # Cheap hashes keep the suite fast; the production cost is the default.
        FLIP_ARGON2_TIME_COST=1,
        FLIP_ARGON2_MEMORY_KIB=1024,
        FLIP_ARGON2_PARALLELISM=1,
    )


@pytest.fixture
async def app(settings: HubSettings, db_url: str) -> AsyncIterator[FastAPI]:
    """The hub application with its lifespan entered (migrated, roles seeded)."""
    application = create_app(settings, db_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def hub(app: FastAPI) -> HubState:
    """The running hub's process state: settings, sessions, keys, limiter."""
    state: HubState = app.state.hub
    return state


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as c:
        yield c


@pytest.fixture
async def db(hub: HubState) -> AsyncIterator[AsyncSession]:
    """A session for arranging and inspecting state directly (commit what you arrange)."""
    async with hub.sessions() as session:
        yield session


@pytest.fixture
def make_user(hub: HubState) -> MakeUser:
    """Create a user with global roles (and optional Trust Admin grants) and a signed-in session."""
    return make_user_factory(hub)
