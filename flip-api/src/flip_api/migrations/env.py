"""Alembic environment: migrations run synchronously with psycopg 3 against the configured URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from flip_api.db.models import Base
from flip_api.db.session import normalise_url

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = (
        config.get_main_option("sqlalchemy.url")
        or os.environ.get("DATABASE_URL")
        or os.environ.get("FLIP_DATABASE_URL")
    )
    if not url:
        raise SystemExit("set DATABASE_URL to the database to migrate")
    url = normalise_url(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            # Serialise concurrent starters (several replicas booting at once) on one advisory lock.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(726001)")
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()
