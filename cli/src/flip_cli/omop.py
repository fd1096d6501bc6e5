"""``flip trust omop``: the trust's OMOP database — schema, read-only role and synthetic data.

    flip trust omop init [--readonly-role NAME] [--readonly-password-stdin]
    flip trust omop generate --persons N [--seed S] [--profile north|south|east] [--replace]

The database comes from ``--database-url`` or ``FLIP_OMOP_DATABASE_URL`` (a ``postgresql://`` URL;
``postgres://`` and SQLAlchemy's ``postgresql+psycopg://`` are accepted too).  Exit codes: 0 ok,
1 failure (e.g. the schema already holds data and ``--replace`` was not given), 2 usage, 3
configuration (no, malformed or unreachable database, or a connecting user that lacks privileges).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

from flip_cli.errors import CliError, config_error
from flip_omop import (
    PERSON_SUMMARY,
    PROFILE_NAMES,
    ReadOnlyRoleError,
    SchemaNotEmptyError,
    create_readonly_role,
    create_schema,
    load_synthetic,
    refresh_person_summary,
)

DATABASE_URL_ENV = "FLIP_OMOP_DATABASE_URL"
DEFAULT_READONLY_ROLE = "flip_omop_reader"
_SCHEMES = re.compile(r"^(postgres|postgresql)(\+psycopg2?)?://", re.IGNORECASE)
_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

database_url_option = click.option(
    "--database-url",
    envvar=DATABASE_URL_ENV,
    show_envvar=True,
    metavar="URL",
    help="The trust's OMOP database, e.g. postgresql://flip@db.internal/omop.",
)


def conninfo_from_url(url: str | None) -> str:
    """A libpq connection string for a ``postgresql://`` URL (configuration error, exit 3, if unusable)."""
    if not url:
        raise config_error(f"no OMOP database: pass --database-url or set {DATABASE_URL_ENV}")
    match = _SCHEMES.match(url)
    if match is None:
        raise config_error("the OMOP database URL must start with postgresql:// (or postgres://)")
    # libpq parses the URL itself (user, password, host, port, ?host=/socket/dir, options…);
    # only SQLAlchemy's driver suffix has to go.
    conninfo = "postgresql://" + url[match.end() :]
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the URL in some messages; it may hold a password, so it is cut out.
        detail = _first_line(exc).replace(conninfo, "<url>")
        raise config_error(f"malformed OMOP database URL: {detail}") from exc
    return conninfo


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _database_errors() -> Iterator[None]:
    """Map database failures onto the documented exit codes."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise config_error(f"cannot reach the OMOP database: {_first_line(exc)}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise config_error(f"the database user lacks a privilege this needs: {_first_line(exc)}") from exc
    except ReadOnlyRoleError as exc:
        raise config_error(str(exc)) from exc
    except SchemaNotEmptyError as exc:
        raise CliError(f"{exc} (use --replace)") from exc
    except psycopg.Error as exc:
        raise CliError(f"database error: {_first_line(exc)}") from exc


def _role_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _ROLE.match(value) or value.lower().startswith("pg_"):
        raise click.BadParameter("1-63 letters, digits or underscores, not starting with a digit or pg_")
    return value


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.UsageError("--readonly-password-stdin was given but stdin held no password")
    return password


@click.group()
def omop() -> None:
    """The trust's OMOP database: schema, read-only role and synthetic data."""


@omop.command()
@database_url_option
@click.option(
    "--readonly-role",
    default=DEFAULT_READONLY_ROLE,
    show_default=True,
    callback=_role_name,
    help="The LOGIN role the data-access-api queries through; it can only SELECT from schema omop.",
)
@click.option(
    "--readonly-password-stdin",
    is_flag=True,
    help="Read the read-only role's password from stdin; without it the role has no password.",
)
def init(database_url: str | None, readonly_role: str, readonly_password_stdin: bool) -> None:
    """Create schema omop (OMOP CDM 5.4 + imaging tables) and the read-only role; safe to repeat."""
    conninfo = conninfo_from_url(database_url)
    password = _read_password() if readonly_password_stdin else None
    with _database_errors():
        create_schema(conninfo)
        create_readonly_role(conninfo, readonly_role, password)
    click.echo(f"schema omop ready; read-only role {readonly_role} can SELECT from it and nothing else")


@omop.command()
@database_url_option
@click.option("--persons", type=click.IntRange(1, 100_000_000), required=True, help="How many persons to generate.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    default=PROFILE_NAMES[0],
    show_default=True,
    help="The trust profile (population, coding habits, imaging practice).",
)
@click.option("--replace", is_flag=True, help="Empty the OMOP tables first if they already hold data.")
def generate(database_url: str | None, persons: int, seed: int, profile: str, replace: bool) -> None:
    """Generate a deterministic synthetic dataset and bulk-load it into schema omop.

    The same --persons, --seed and --profile always produce the same rows.  Refuses to load into
    tables that already hold data unless --replace is given.
    """
    conninfo = conninfo_from_url(database_url)
    with _database_errors():
        summary = load_synthetic(conninfo, persons, seed, profile, replace=replace)
    click.echo(f"loaded profile {summary.profile}: {persons} persons, seed {seed}, in {summary.seconds:.1f} s")
    width = max(len(name) for name in summary.rows)
    for name, count in summary.rows.items():
        click.echo(f"  {name:<{width}}  {count:>12,}")


@omop.command()
@database_url_option
def refresh(database_url: str | None) -> None:
    """Rebuild FLIP's per-person summary (sex, year of birth, imaging modalities) after loading OMOP data.

    Run it after every ETL into schema omop; until it has run, cohort statistics use slower live joins.
    """
    conninfo = conninfo_from_url(database_url)
    with _database_errors():
        seconds = refresh_person_summary(conninfo)
    click.echo(f"omop.{PERSON_SUMMARY} rebuilt in {seconds:.1f} s")
