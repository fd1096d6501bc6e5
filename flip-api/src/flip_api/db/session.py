"""Database engine, sessions, migrations and the embedded-PostgreSQL fallback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from flip_core.embedded_pg import EmbeddedPostgres

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
HUB_DATABASE = "flip"


def normalise_url(url: str) -> str:
    """Accept ``postgres://`` / ``postgresql://`` URLs and pin the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql", "postgresql+psycopg2"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg":
        raise ValueError(f"unsupported database driver {parsed.drivername!r}; FLIP needs PostgreSQL")
    return parsed.render_as_string(hide_password=False)


def libpq_conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy URL (used for admin tasks with plain psycopg)."""
    parsed = make_url(url)
    parts = {
        "host": parsed.query.get("host") or parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    return " ".join(f"{k}='{v}'" for k, v in parts.items() if v)


def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist (embedded and test servers)."""
    parsed = make_url(url)
    name = parsed.database
    if not name:
        raise ValueError("database URL names no database")
    admin = libpq_conninfo(parsed.set(database="postgres").render_as_string(hide_password=False))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')  # name comes from our own config, not a user


@dataclass
class ResolvedDatabase:
    url: str
    embedded: EmbeddedPostgres | None


def resolve_database(database_url: str | None, state_dir: Path) -> ResolvedDatabase:
    """Use ``DATABASE_URL`` when given, else start (or attach to) an embedded server under ``state_dir``."""
    if database_url:
        return ResolvedDatabase(normalise_url(database_url), None)
    server = EmbeddedPostgres(state_dir / "pgdata", persistent=True)
    url = server.url(HUB_DATABASE)
    ensure_database(url)
    return ResolvedDatabase(url, server)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def run_migrations(url: str) -> None:
    """Apply every migration (``upgrade head``); raises on failure so the service fails fast."""
    command.upgrade(alembic_config(url), "head")


def make_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session inside one transaction: committed on success, rolled back on any exception."""
    async with maker() as session, session.begin():
        yield session
