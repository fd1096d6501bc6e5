"""Schema ``omop``: complete and idempotent DDL, and a read-only role that really is read-only."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from flip_omop import TABLES, ReadOnlyRoleError, create_readonly_role, create_schema, load_synthetic

Db = psycopg.Connection[tuple[object, ...]]

INT, D, TS, N, T = "integer", "date", "timestamp without time zone", "numeric", "text"


def V(n: int) -> str:
    return f"character varying({n})"


# Written out from the OMOP CDM 5.4 and MI-CDM specifications (not derived from our DDL file), so
# a column dropped, renamed or retyped in the DDL fails here.
EXPECTED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "person": [
        ("person_id", INT), ("gender_concept_id", INT), ("year_of_birth", INT), ("month_of_birth", INT),
        ("day_of_birth", INT), ("birth_datetime", TS), ("race_concept_id", INT), ("ethnicity_concept_id", INT),
        ("location_id", INT), ("provider_id", INT), ("care_site_id", INT), ("person_source_value", V(50)),
        ("gender_source_value", V(50)), ("gender_source_concept_id", INT), ("race_source_value", V(50)),
        ("race_source_concept_id", INT), ("ethnicity_source_value", V(50)), ("ethnicity_source_concept_id", INT),
    ],
    "observation_period": [
        ("observation_period_id", INT), ("person_id", INT), ("observation_period_start_date", D),
        ("observation_period_end_date", D), ("period_type_concept_id", INT),
    ],
    "visit_occurrence": [
        ("visit_occurrence_id", INT), ("person_id", INT), ("visit_concept_id", INT), ("visit_start_date", D),
        ("visit_start_datetime", TS), ("visit_end_date", D), ("visit_end_datetime", TS),
        ("visit_type_concept_id", INT), ("provider_id", INT), ("care_site_id", INT), ("visit_source_value", V(50)),
        ("visit_source_concept_id", INT), ("admitted_from_concept_id", INT), ("admitted_from_source_value", V(50)),
        ("discharged_to_concept_id", INT), ("discharged_to_source_value", V(50)),
        ("preceding_visit_occurrence_id", INT),
    ],
    "condition_occurrence": [
        ("condition_occurrence_id", INT), ("person_id", INT), ("condition_concept_id", INT),
        ("condition_start_date", D), ("condition_start_datetime", TS), ("condition_end_date", D),
        ("condition_end_datetime", TS), ("condition_type_concept_id", INT), ("condition_status_concept_id", INT),
        ("stop_reason", V(20)), ("provider_id", INT), ("visit_occurrence_id", INT), ("visit_detail_id", INT),
        ("condition_source_value", V(50)), ("condition_source_concept_id", INT),
        ("condition_status_source_value", V(50)),
    ],
    "drug_exposure": [
        ("drug_exposure_id", INT), ("person_id", INT), ("drug_concept_id", INT), ("drug_exposure_start_date", D),
        ("drug_exposure_start_datetime", TS), ("drug_exposure_end_date", D), ("drug_exposure_end_datetime", TS),
        ("verbatim_end_date", D), ("drug_type_concept_id", INT), ("stop_reason", V(20)), ("refills", INT),
        ("quantity", N), ("days_supply", INT), ("sig", T), ("route_concept_id", INT), ("lot_number", V(50)),
        ("provider_id", INT), ("visit_occurrence_id", INT), ("visit_detail_id", INT), ("drug_source_value", V(50)),
        ("drug_source_concept_id", INT), ("route_source_value", V(50)), ("dose_unit_source_value", V(50)),
    ],
    "procedure_occurrence": [
        ("procedure_occurrence_id", INT), ("person_id", INT), ("procedure_concept_id", INT), ("procedure_date", D),
        ("procedure_datetime", TS), ("procedure_end_date", D), ("procedure_end_datetime", TS),
        ("procedure_type_concept_id", INT), ("modifier_concept_id", INT), ("quantity", INT), ("provider_id", INT),
        ("visit_occurrence_id", INT), ("visit_detail_id", INT), ("procedure_source_value", V(50)),
        ("procedure_source_concept_id", INT), ("modifier_source_value", V(50)),
    ],
    "measurement": [
        ("measurement_id", INT), ("person_id", INT), ("measurement_concept_id", INT), ("measurement_date", D),
        ("measurement_datetime", TS), ("measurement_time", V(10)), ("measurement_type_concept_id", INT),
        ("operator_concept_id", INT), ("value_as_number", N), ("value_as_concept_id", INT), ("unit_concept_id", INT),
        ("range_low", N), ("range_high", N), ("provider_id", INT), ("visit_occurrence_id", INT),
        ("visit_detail_id", INT), ("measurement_source_value", V(50)), ("measurement_source_concept_id", INT),
        ("unit_source_value", V(50)), ("unit_source_concept_id", INT), ("value_source_value", V(50)),
        ("measurement_event_id", INT), ("meas_event_field_concept_id", INT),
    ],
    "observation": [
        ("observation_id", INT), ("person_id", INT), ("observation_concept_id", INT), ("observation_date", D),
        ("observation_datetime", TS), ("observation_type_concept_id", INT), ("value_as_number", N),
        ("value_as_string", V(60)), ("value_as_concept_id", INT), ("qualifier_concept_id", INT),
        ("unit_concept_id", INT), ("provider_id", INT), ("visit_occurrence_id", INT), ("visit_detail_id", INT),
        ("observation_source_value", V(50)), ("observation_source_concept_id", INT), ("unit_source_value", V(50)),
        ("qualifier_source_value", V(50)), ("value_source_value", V(50)), ("observation_event_id", INT),
        ("obs_event_field_concept_id", INT),
    ],
    "death": [
        ("person_id", INT), ("death_date", D), ("death_datetime", TS), ("death_type_concept_id", INT),
        ("cause_concept_id", INT), ("cause_source_value", V(50)), ("cause_source_concept_id", INT),
    ],
    "concept": [
        ("concept_id", INT), ("concept_name", V(255)), ("domain_id", V(20)), ("vocabulary_id", V(20)),
        ("concept_class_id", V(20)), ("standard_concept", V(1)), ("concept_code", V(50)),
        ("valid_start_date", D), ("valid_end_date", D), ("invalid_reason", V(1)),
    ],
    "image_occurrence": [
        ("image_occurrence_id", INT), ("person_id", INT), ("procedure_occurrence_id", INT),
        ("visit_occurrence_id", INT), ("anatomic_site_concept_id", INT), ("wadors_uri", V(1024)),
        ("local_path", V(1024)),
        ("image_occurrence_date", D), ("image_study_uid", V(250)), ("image_series_uid", V(250)),
        ("modality_concept_id", INT), ("accession_id", T), ("modality_source_value", V(50)),
        ("anatomic_site_source_value", V(50)),
    ],
    "image_feature": [
        ("image_feature_id", INT), ("person_id", INT), ("image_occurrence_id", INT),
        ("image_feature_event_field_concept_id", INT), ("image_feature_event_id", INT),
        ("image_feature_concept_id", INT), ("image_feature_type_concept_id", INT), ("image_finding_concept_id", INT),
        ("image_finding_id", INT), ("anatomic_site_concept_id", INT), ("alg_system", V(1024)),
        ("alg_datetime", TS),
    ],
}  # fmt: skip

# Columns cohort queries filter on, which must carry an index (besides the primary keys).
EXPECTED_INDEXED = {
    ("condition_occurrence", "condition_concept_id"),
    ("drug_exposure", "drug_concept_id"),
    ("procedure_occurrence", "procedure_concept_id"),
    ("measurement", "measurement_concept_id"),
    ("observation", "observation_concept_id"),
    ("visit_occurrence", "visit_concept_id"),
    ("image_occurrence", "modality_concept_id"),
    ("image_occurrence", "anatomic_site_concept_id"),
    ("image_feature", "image_occurrence_id"),
}


def _columns(conn: Db) -> dict[str, list[tuple[str, str]]]:
    rows = conn.execute(
        """
        SELECT table_name, column_name,
               CASE WHEN data_type = 'character varying'
                    THEN 'character varying(' || character_maximum_length || ')' ELSE data_type END
        FROM information_schema.columns WHERE table_schema = 'omop' ORDER BY table_name, ordinal_position
        """
    ).fetchall()
    result: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        result.setdefault(str(table), []).append((str(column), str(data_type)))
    return result


def _catalogue(conn: Db) -> list[tuple[object, ...]]:
    """Everything the DDL creates, for comparing before and after a second application."""
    return conn.execute(
        """
        SELECT c.relname, c.relkind, pg_get_indexdef(c.oid), obj_description(c.oid)
        FROM pg_class c WHERE c.relnamespace = 'omop'::regnamespace
        UNION ALL
        SELECT conname, contype::"char", pg_get_constraintdef(oid), NULL FROM pg_constraint
        WHERE connamespace = 'omop'::regnamespace
        ORDER BY 1, 2
        """
    ).fetchall()


def _single_column_indexes(conn: Db) -> set[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT t.relname, a.attname FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
        WHERE t.relnamespace = 'omop'::regnamespace
        """
    ).fetchall()
    return {(str(t), str(c)) for t, c in rows}


def test_schema_has_every_table_and_column_of_the_cdm_and_the_imaging_extension(omop_db: str) -> None:
    create_schema(omop_db)

    with psycopg.connect(omop_db) as conn:
        assert _columns(conn) == EXPECTED_COLUMNS
        assert set(TABLES) == set(EXPECTED_COLUMNS)
        primary_keys = conn.execute(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'omop'::regnamespace AND contype IN ('p', 'u')"
        ).fetchall()
        indexed = _single_column_indexes(conn)

    keys = {(str(t), str(d)) for t, d in primary_keys}
    for table, columns in EXPECTED_COLUMNS.items():
        if table != "death":  # CDM 5.4 gives death no primary key
            assert (f"omop.{table}", f"PRIMARY KEY ({columns[0][0]})") in keys
        if any(name == "person_id" for name, _ in columns):
            assert (table, "person_id") in indexed, f"{table}.person_id has no index"
    assert ("omop.image_occurrence", "UNIQUE (accession_id)") in keys
    assert indexed >= EXPECTED_INDEXED


def test_create_schema_is_idempotent(omop_db: str) -> None:
    create_schema(omop_db)
    with psycopg.connect(omop_db) as conn:
        before = _catalogue(conn)
        conn.execute("INSERT INTO omop.concept VALUES (1, 'kept', 'd', 'v', 'c', NULL, 'x', now(), now(), NULL)")
        conn.commit()

    create_schema(omop_db)
    create_schema(omop_db)

    with psycopg.connect(omop_db) as conn:
        assert _catalogue(conn) == before
        assert conn.execute("SELECT concept_name FROM omop.concept").fetchall() == [("kept",)]


def _as_role(conninfo: str, role: str) -> psycopg.Connection[tuple[object, ...]]:
    # The embedded server trusts local socket connections, so no password is needed to log in.
    return psycopg.connect(make_conninfo(conninfo, user=role), autocommit=True)


def _in_read_write_transaction(conn: Db, statement: str) -> None:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ WRITE")
        conn.execute(statement)


WRITES = [
    "INSERT INTO omop.person (person_id, gender_concept_id, year_of_birth, race_concept_id, ethnicity_concept_id) "
    "VALUES (999999999, 8507, 1970, 0, 0)",
    "UPDATE omop.person SET year_of_birth = 1900",
    "DELETE FROM omop.measurement",
    "TRUNCATE omop.death",
    "CREATE TABLE omop.scratch (x int)",
    "CREATE TABLE public.scratch (x int)",
    "CREATE TEMP TABLE scratch (x int)",
    "CREATE SCHEMA scratch",
]


def test_readonly_role_can_select_but_not_write_or_create(omop_db: str, role_name: str) -> None:
    conninfo = omop_db
    load_synthetic(conninfo, 200, 1, "north")
    create_readonly_role(conninfo, role_name, "s3cret'pa\"ss")

    with _as_role(conninfo, role_name) as conn:
        assert conn.execute("SELECT count(*) FROM omop.person").fetchone() == (200,)
        assert conn.execute("SELECT count(*) FROM person").fetchone() == (200,)  # search_path is omop
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        for statement in WRITES:
            # First line of defence: every transaction is read-only by default.
            with pytest.raises(errors.ReadOnlySqlTransaction):
                conn.execute(statement)
        # Second line: even a read-write transaction lacks the privileges.
        for statement in WRITES:
            with pytest.raises(errors.InsufficientPrivilege):
                _in_read_write_transaction(conn, statement)

    with psycopg.connect(conninfo) as owner:
        password = owner.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role_name,)).fetchone()
        assert password is not None
        assert str(password[0]).startswith("SCRAM-SHA-256$")  # only the verifier reached the server
        attributes = owner.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s", (role_name,)
        ).fetchone()
        assert attributes == (True, False, False, False)


def test_readonly_role_reads_tables_created_later_and_can_be_applied_again(omop_db: str, role_name: str) -> None:
    create_readonly_role(omop_db, role_name, "first")
    with psycopg.connect(omop_db) as owner:
        owner.execute("CREATE TABLE omop.cohort_cache (person_id integer)")
        owner.execute("INSERT INTO omop.cohort_cache VALUES (1)")

    with psycopg.connect(omop_db) as owner:
        verifier = owner.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role_name,)).fetchone()

    create_readonly_role(omop_db, role_name, None)  # again, without a password: the old one stays

    with _as_role(omop_db, role_name) as conn:
        assert conn.execute("SELECT person_id FROM omop.cohort_cache").fetchall() == [(1,)]
    with psycopg.connect(omop_db) as owner:
        row = owner.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role_name,)).fetchone()
        assert row == verifier
        assert row is not None
        assert row[0] is not None


def test_readonly_role_loses_write_privileges_it_had_before(omop_db: str, role_name: str) -> None:
    create_schema(omop_db)
    with psycopg.connect(omop_db) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE").format(sql.Identifier(role_name)))
        owner.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA omop TO {}").format(sql.Identifier(role_name)))
        owner.execute(sql.SQL("GRANT CREATE ON SCHEMA omop TO {}").format(sql.Identifier(role_name)))

    create_readonly_role(omop_db, role_name, None)

    with _as_role(omop_db, role_name) as conn, pytest.raises(errors.InsufficientPrivilege):
        _in_read_write_transaction(conn, "DELETE FROM omop.concept")
    with psycopg.connect(omop_db) as owner:
        row = owner.execute("SELECT rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s", (role_name,))
        assert row.fetchone() == (False, False)


@pytest.mark.parametrize("bad", ["", "1reader", "reader; DROP TABLE omop.person", 'x"y', "pg_reader", "a" * 64])
def test_readonly_role_name_is_validated(omop_db: str, bad: str) -> None:
    with pytest.raises(ValueError, match="role"):
        create_readonly_role(omop_db, bad, None)


def test_readonly_role_refuses_superusers_and_the_owner(omop_db: str, role_name: str) -> None:
    with psycopg.connect(omop_db) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role_name)))
    assert row is not None
    with pytest.raises(ValueError, match="must not be the role that owns"):
        create_readonly_role(omop_db, str(row[0]), None)
    with pytest.raises(ValueError, match="refusing to turn superuser"):
        create_readonly_role(omop_db, role_name, None)


def test_readonly_role_is_refused_when_public_keeps_write_access(omop_db: str, role_name: str) -> None:
    create_schema(omop_db)
    with psycopg.connect(omop_db) as owner:
        owner.execute("CREATE SCHEMA shared")
        owner.execute("GRANT CREATE ON SCHEMA shared TO PUBLIC")

    with pytest.raises(ReadOnlyRoleError, match="CREATE on schema shared"):
        create_readonly_role(omop_db, role_name, None)

    with psycopg.connect(omop_db) as owner:  # rolled back: the role was not left half-made
        assert owner.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role_name,)).fetchone() is None
