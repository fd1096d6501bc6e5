"""``flip trust omop``: schema and read-only role, synthetic data, and the documented exit codes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import Result
from psycopg import sql

from flip_cli.errors import ExitCode
from flip_cli.omop import conninfo_from_url

FlipRunner = Callable[..., Result]
Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def omop(flip: FlipRunner, cli_env: dict[str, str]) -> Callable[..., Result]:
    """Invoke ``flip trust omop ARGS...`` with FLIP_OMOP_DATABASE_URL pointing at the test database."""

    def invoke(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
        return flip(
            "trust", "omop", *args, stdin=stdin, env={"FLIP_OMOP_DATABASE_URL": cli_env["DATABASE_URL"], **(env or {})}
        )

    return invoke


@pytest.fixture
def reader(db: Db) -> Iterator[str]:
    """A unique read-only role name, dropped after the test (roles outlive the test database)."""
    name = f"flip_reader_{uuid.uuid4().hex[:8]}"
    yield name
    if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_init_creates_the_schema_and_a_readonly_role_and_can_run_again(omop: FlipRunner, db: Db, reader: str) -> None:
    first = omop("init", "--readonly-role", reader, "--readonly-password-stdin", stdin="pa'ss word\n")
    again = omop("init", "--readonly-role", reader)

    assert first.exit_code == ExitCode.OK, first.output
    assert again.exit_code == ExitCode.OK, again.output
    assert reader in first.stdout
    tables = db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'omop'").fetchone()
    assert tables == (12,)
    privileges = db.execute(
        "SELECT has_table_privilege(%(r)s, 'omop.person', 'SELECT'), "
        "has_table_privilege(%(r)s, 'omop.person', 'INSERT'), "
        "has_database_privilege(%(r)s, current_database(), 'TEMPORARY')",
        {"r": reader},
    ).fetchone()
    assert privileges == (True, False, False)


def test_generate_loads_a_dataset_and_refuses_to_overwrite_without_replace(omop: FlipRunner, db: Db) -> None:
    result = omop("generate", "--persons", "300", "--seed", "3", "--profile", "south")

    assert result.exit_code == ExitCode.OK, result.output
    assert "loaded profile south: 300 persons, seed 3" in result.stdout
    assert "image_occurrence" in result.stdout
    assert db.execute("SELECT count(*) FROM omop.person").fetchone() == (300,)

    refused = omop("generate", "--persons", "200", "--profile", "east")
    assert refused.exit_code == ExitCode.FAILURE
    assert "--replace" in refused.stderr
    assert db.execute("SELECT count(*) FROM omop.person").fetchone() == (300,)

    replaced = omop("generate", "--persons", "200", "--profile", "east", "--replace")
    assert replaced.exit_code == ExitCode.OK, replaced.output
    assert db.execute("SELECT count(*) FROM omop.person").fetchone() == (200,)
    assert db.execute("SELECT min(accession_id) FROM omop.image_occurrence").fetchone() == ("EST00000001",)


def test_database_url_option_overrides_the_environment(omop: FlipRunner, cli_env: dict[str, str], db: Db) -> None:
    url = cli_env["DATABASE_URL"]

    result = omop("generate", "--persons", "50", "--database-url", url, env={"FLIP_OMOP_DATABASE_URL": "mysql://x"})

    assert result.exit_code == ExitCode.OK, result.output
    assert db.execute("SELECT count(*) FROM omop.person").fetchone() == (50,)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "no OMOP database"),
        ("mysql://user@host/db", "must start with postgresql://"),
        ("postgresql://user@/omop?host=/nonexistent/socket/dir", "cannot reach the OMOP database"),
        ("postgresql://user@/omop?bogus=1", "malformed OMOP database URL"),
        ("postgresql://user:hunter2@[::1/omop", "malformed OMOP database URL"),
    ],
)
def test_bad_database_urls_are_configuration_errors(omop: FlipRunner, url: str, message: str) -> None:
    result = omop("generate", "--persons", "10", env={"FLIP_OMOP_DATABASE_URL": url})

    assert result.exit_code == ExitCode.CONFIG, result.output
    assert message in result.stderr
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("generate", "--persons", "0"),
        ("generate",),
        ("generate", "--persons", "10", "--profile", "west"),
        ("generate", "--persons", "10", "--seed", "-1"),
        ("init", "--readonly-role", "bad name; DROP TABLE x"),
        ("init", "--readonly-role", "pg_reader"),
    ],
)
def test_bad_options_are_usage_errors(omop: FlipRunner, args: tuple[str, ...]) -> None:
    assert omop(*args).exit_code == ExitCode.USAGE


def test_empty_password_on_stdin_is_a_usage_error(omop: FlipRunner) -> None:
    result = omop("init", "--readonly-password-stdin", stdin="\n")

    assert result.exit_code == ExitCode.USAGE
    assert "stdin held no password" in result.stderr


def test_sqlalchemy_style_urls_become_libpq_urls() -> None:
    assert conninfo_from_url("postgresql+psycopg://u:p@h:5433/omop") == "postgresql://u:p@h:5433/omop"
    assert conninfo_from_url("postgres://u@/omop?host=/run/pg") == "postgresql://u@/omop?host=/run/pg"


def test_the_real_entry_point_exits_3_on_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql://nobody@/omop?host={tmp_path / 'no-socket-here'}"

    process = subprocess.run(
        [sys.executable, "-m", "flip_cli.main", "trust", "omop", "generate", "--persons", "5", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert process.returncode == ExitCode.CONFIG, process.stderr
    assert "cannot reach the OMOP database" in process.stderr
