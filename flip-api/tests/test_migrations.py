"""The schema is owned by migrations: models and the migrated database must not drift apart."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, pool, text

from flip_api.db.models import Base
from flip_api.db.session import alembic_config, run_migrations


def _diff(url: str) -> list[Any]:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))


def test_models_match_migrations(db_url: str) -> None:
    diff = _diff(db_url)
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_drift_detector_is_not_blind(db_url: str) -> None:
    engine = create_engine(db_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE trusts ADD COLUMN surprise integer"))
    assert any("surprise" in repr(d) for d in _diff(db_url))


def test_downgrade_to_base_and_upgrade_again(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "base")
    engine = create_engine(db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one()
    assert tables == 1  # only alembic_version remains
    run_migrations(db_url)
    assert _diff(db_url) == []
