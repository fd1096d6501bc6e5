"""The trust's OMOP schema and the read-only role the data-access-api queries it through.

``create_schema`` applies the packaged DDL (idempotent).  ``create_readonly_role`` makes a LOGIN
role that can read schema ``omop`` and nothing else: it can create no table, temporary or not, in
any schema, and its sessions default to read-only transactions.  After granting, the function
checks those properties against the catalogue and refuses (rolling everything back) if anything —
for instance a privilege granted to PUBLIC that the caller cannot revoke — still lets the role write.
"""

from __future__ import annotations

import re
import time
from importlib import resources

import psycopg
from psycopg import sql

OMOP_SCHEMA = "omop"
TABLES: tuple[str, ...] = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "death",
    "concept",
    "image_occurrence",
    "image_feature",
)
"""Every table the DDL creates in schema ``omop``."""

# Serialises concurrent DDL/role changes from several processes (any constant works; this one is "OMOP").
_DDL_LOCK_KEY = 0x4F4D4F50
_ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ReadOnlyRoleError(RuntimeError):
    """The role could not be made read-only (nothing was changed)."""


def ddl() -> str:
    """The packaged DDL: schema, CDM 5.4 + MI-CDM tables, primary keys and secondary indexes."""
    return resources.files("flip_omop").joinpath("sql/omop_cdm54.sql").read_text(encoding="utf-8")


def _apply_ddl(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK_KEY,))
    conn.execute(ddl())


def create_schema(conninfo: str) -> None:
    """Create schema ``omop`` with every table and index (idempotent: existing objects are kept)."""
    with psycopg.connect(conninfo) as conn:
        _apply_ddl(conn)


PERSON_SUMMARY = "flip_person_summary"


def refresh_person_summary(conninfo: str) -> float:
    """Rebuild ``omop.flip_person_summary`` from the current data; returns the seconds it took.

    Run it after every load of OMOP data (the synthetic loader does): the data-access-api reads
    demographics and imaging modalities from it, and uses slower live joins while it is unpopulated.
    """
    started = time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            sql.SQL("REFRESH MATERIALIZED VIEW {}.{}").format(
                sql.Identifier(OMOP_SCHEMA), sql.Identifier(PERSON_SUMMARY)
            )
        )
        conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(OMOP_SCHEMA), sql.Identifier(PERSON_SUMMARY)))
    return time.perf_counter() - started


def _check_role_name(role: str) -> None:
    if not _ROLE_NAME.match(role):
        raise ValueError("role must be 1-63 letters, digits or underscores, not starting with a digit")
    if role.lower().startswith("pg_"):
        raise ValueError("role names starting with pg_ are reserved by PostgreSQL")


def create_readonly_role(conninfo: str, role: str, password: str | None) -> None:
    """Create (or bring back into line) a LOGIN role that can only SELECT from schema ``omop``.

    The role gets CONNECT on the database, USAGE on ``omop``, SELECT on its tables now and (through
    default privileges) on tables the connecting user creates there later, and
    ``default_transaction_read_only = on``.  CREATE on schema ``public`` and TEMPORARY on the
    database are revoked from PUBLIC (the PostgreSQL 15+ default for the former; the latter is only
    used by roles that create temporary tables, which a dedicated OMOP database does not need).
    With a ``password`` only the SCRAM verifier computed here is sent to the server; with
    ``None`` a new role gets no password (peer/certificate authentication) and an existing role
    keeps the one it has, so applying this again never locks the data-access-api out.  Refuses to touch the connecting
    role itself or a superuser.  Creates the schema first if it does not exist.
    """
    _check_role_name(role)
    with psycopg.connect(conninfo) as conn:
        _apply_ddl(conn)
        current_user, database = _one(conn, "SELECT current_user, current_database()")
        if role == current_user:
            raise ValueError("the read-only role must not be the role that owns the schema")
        existing = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if existing is not None and existing[0]:
            raise ValueError(f"refusing to turn superuser {role!r} into a read-only role")

        ident, db, schema = sql.Identifier(role), sql.Identifier(str(database)), sql.Identifier(OMOP_SCHEMA)
        if existing is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS").format(
                ident
            )
        )
        if password is not None:
            # libpq hashes with the server's password_encryption: the clear text never leaves here.
            verifier = conn.pgconn.encrypt_password(password.encode(), role.encode()).decode()
            conn.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(ident, sql.Literal(verifier)))

        has_public = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'").fetchone() is not None
        public_schema = ("REVOKE CREATE ON SCHEMA public FROM PUBLIC", "REVOKE ALL ON SCHEMA public FROM {role}")
        for statement in (
            *(public_schema if has_public else ()),
            "REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC",
            "REVOKE ALL ON DATABASE {db} FROM {role}",
            "REVOKE ALL ON SCHEMA {schema} FROM {role}",
            "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
            "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES FROM {role}",
            "GRANT CONNECT ON DATABASE {db} TO {role}",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}",
            "ALTER ROLE {role} SET default_transaction_read_only = on",
            "ALTER ROLE {role} SET search_path = {schema}",
        ):
            conn.execute(sql.SQL(statement).format(db=db, role=ident, schema=schema))
        problems = _write_capabilities(conn, role, str(database))
        if problems:
            conn.rollback()
            raise ReadOnlyRoleError(
                f"role {role!r} would still be able to write ({'; '.join(problems)}); "
                "connect as the database owner or a superuser so these privileges can be revoked"
            )


def _one(conn: psycopg.Connection[tuple[object, ...]], query: str) -> tuple[object, ...]:
    row = conn.execute(query).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row


def _write_capabilities(conn: psycopg.Connection[tuple[object, ...]], role: str, database: str) -> list[str]:
    """Every way ``role`` could still create or change something, read back from the catalogue."""
    problems: list[str] = []
    row = conn.execute(
        "SELECT has_database_privilege(%(r)s, %(d)s, 'CREATE'), has_database_privilege(%(r)s, %(d)s, 'TEMPORARY')",
        {"r": role, "d": database},
    ).fetchone()
    if row is None or row[0]:
        problems.append("CREATE on the database")
    if row is None or row[1]:
        problems.append("TEMPORARY on the database")
    schemas = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(%s, oid, 'CREATE') ORDER BY nspname",
        (role,),
    ).fetchall()
    problems += [f"CREATE on schema {name}" for (name,) in schemas]
    tables = conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p') "
        "AND (has_table_privilege(%s, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')) "
        "ORDER BY c.relname",
        (OMOP_SCHEMA, role),
    ).fetchall()
    problems += [f"writes to {OMOP_SCHEMA}.{name}" for (name,) in tables]
    return problems
