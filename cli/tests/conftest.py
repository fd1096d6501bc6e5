"""Fixtures for the ``flip`` command tests: a real PostgreSQL and a fresh, empty database per test.

``DATABASE_URL`` (a server URL; its database part is ignored) selects an external server; otherwise an
embedded server is started in a temporary directory for the session.  The commands under test run
through click's ``CliRunner`` with ``DATABASE_URL`` and ``FLIP_STATE_DIR`` in their environment, so
they migrate the empty database themselves, exactly as an operator's first command would.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from flip_api.db.session import libpq_conninfo, normalise_url
from flip_cli.main import cli
from flip_core.embedded_pg import throwaway_server


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """SQLAlchemy URL of the test server's ``postgres`` database."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield _with_database(normalise_url(external), "postgres")
        return
    with throwaway_server("flip-cli-test-pg-") as server:
        yield server.url("postgres")


@pytest.fixture
def cli_env(pg_server_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment pointing ``flip`` at a new, empty database (dropped afterwards) and a private state dir."""
    name = f"flip_cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_conninfo(pg_server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield {
        "DATABASE_URL": _with_database(pg_server_url, name),
        "FLIP_STATE_DIR": str(tmp_path / "state"),
        "FLIP_HUB_PUBLIC_URL": "https://hub.flip.example.org",
    }
    with psycopg.connect(libpq_conninfo(pg_server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(cli_env: dict[str, str]) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection (autocommit) to the test database, for checking and tampering."""
    with psycopg.connect(libpq_conninfo(cli_env["DATABASE_URL"]), autocommit=True) as conn:
        yield conn


@pytest.fixture
def flip(cli_env: dict[str, str]) -> Callable[..., Result]:
    """Invoke ``flip ARGS...`` in-process against the test database; returns click's Result."""
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(cli, list(args), input=stdin, env={**cli_env, **(env or {})})

    return invoke
