"""The cohort SQL validator: hostile inputs are refused with the right rule, cohort queries pass, and
their re-emitted SQL runs on a real PostgreSQL, reads ``omop`` only and means what the researcher wrote."""

from __future__ import annotations

import dataclasses
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlglot
from psycopg import sql
from sqlglot import exp

from flip_core import cohort_sql
from flip_core.cohort import MAX_SQL_CHARS
from flip_core.cohort_sql import (
    ALLOWED_FUNCTIONS,
    CohortSqlError,
    CohortSqlRule,
    ValidatedQuery,
    validate_cohort_sql,
)
from flip_core.embedded_pg import EmbeddedPostgres, throwaway_server

# The corpus is data in its own module; flip-core/tests is not on sys.path (importlib import mode).
_CORPUS = runpy.run_path(str(Path(__file__).with_name("cohort_sql_corpus.py")))
HOSTILE = _CORPUS["HOSTILE"]
LEGIT = _CORPUS["LEGIT"]
FUNCTION_SAMPLES: dict[str, str] = _CORPUS["FUNCTION_SAMPLES"]
Hostile = _CORPUS["Hostile"]
Legit = _CORPUS["Legit"]

READER = "cohort_sql_reader"

# --- the hostile corpus ---------------------------------------------------------------------------


def test_hostile_corpus_is_large_and_exercises_every_rule() -> None:
    assert len(HOSTILE) >= 80
    assert len({h.label for h in HOSTILE}) == len(HOSTILE), "labels must be unique"
    exercised = {h.rule for h in HOSTILE}
    # UNSTABLE guards against sqlglot generator quirks and TOO_COMPLEX against deep nesting; both are
    # tested separately below.
    assert exercised == {r.value for r in CohortSqlRule} - {CohortSqlRule.UNSTABLE, CohortSqlRule.TOO_COMPLEX}


@pytest.mark.parametrize("case", HOSTILE, ids=[h.label for h in HOSTILE])
def test_hostile_input_is_refused_with_its_rule(case: Hostile) -> None:
    with pytest.raises(CohortSqlError) as caught:
        validate_cohort_sql(case.sql)
    assert caught.value.rule == case.rule, caught.value.detail
    assert caught.value.detail
    assert "\x1b" not in caught.value.detail  # no terminal colour codes from sqlglot's messages


def test_error_is_a_value_error_with_rule_and_detail() -> None:
    with pytest.raises(ValueError, match="function_not_allowed: function pg_sleep is not allowed"):
        validate_cohort_sql("SELECT pg_sleep(1)")
    with pytest.raises(CohortSqlError) as caught:
        validate_cohort_sql("SELECT * FROM pg_catalog.pg_authid")
    assert caught.value.rule == "schema_not_allowed"
    assert "pg_catalog.pg_authid" in caught.value.detail


def test_length_limit_is_on_characters_and_inclusive() -> None:
    base = "SELECT person_id FROM omop.person"
    validate_cohort_sql(base + " " * (MAX_SQL_CHARS - len(base)))
    with pytest.raises(CohortSqlError) as caught:
        validate_cohort_sql(base + " " * (MAX_SQL_CHARS - len(base) + 1))
    assert caught.value.rule == "too_long"


def test_deep_nesting_is_refused_not_crashing() -> None:
    with pytest.raises(CohortSqlError) as caught:
        validate_cohort_sql("SELECT " + "(" * 3000 + "1" + ")" * 3000)
    assert caught.value.rule == "too_complex"


def test_long_flat_expressions_are_fine() -> None:
    """Breadth is not depth: a long chain of conditions must not hit Python's recursion limit."""
    query = "SELECT " + " + ".join(["person_id"] * 800) + " AS total FROM omop.person"  # a tree 800 deep
    result = validate_cohort_sql(query)
    assert result.output_columns == ("total",)
    # quoting makes the output longer than the input; the length limit applies to what the researcher wrote
    assert len(query) <= MAX_SQL_CHARS < len(result.sql)


def test_output_that_does_not_reproduce_itself_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If sqlglot ever emitted text that reads back differently, the query is refused, not executed."""
    real = cohort_sql._validate_once
    calls: list[str] = []

    def drifting(text: str) -> ValidatedQuery:
        calls.append(text)
        result = real(text)
        return result if len(calls) == 1 else dataclasses.replace(result, sql=result.sql + " LIMIT 1")

    monkeypatch.setattr(cohort_sql, "_validate_once", drifting)
    with pytest.raises(CohortSqlError) as caught:
        validate_cohort_sql("SELECT person_id FROM omop.person")
    assert caught.value.rule == "unstable_sql"
    assert calls == ["SELECT person_id FROM omop.person", 'SELECT "person_id" FROM "omop"."person"']


def test_output_that_fails_validation_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cohort_sql._validate_once

    def smuggling(text: str) -> ValidatedQuery:
        result = real(text)
        return dataclasses.replace(result, sql=result.sql + ", pg_sleep(1)")

    monkeypatch.setattr(cohort_sql, "_validate_once", smuggling)
    with pytest.raises(CohortSqlError) as caught:
        validate_cohort_sql("SELECT person_id FROM omop.person")
    assert caught.value.rule == "unstable_sql"


# --- legitimate queries ---------------------------------------------------------------------------


def _tables_in(text: str) -> list[exp.Table]:
    return list(sqlglot.parse_one(text, dialect="postgres").find_all(exp.Table))


def _cte_names(text: str) -> set[str]:
    return {cte.alias_or_name for cte in sqlglot.parse_one(text, dialect="postgres").find_all(exp.CTE)}


def test_legit_corpus_is_large() -> None:
    assert len(LEGIT) >= 25
    assert len({q.label for q in LEGIT}) == len(LEGIT)


@pytest.mark.parametrize("case", LEGIT, ids=[q.label for q in LEGIT])
def test_legit_query_is_accepted_and_pinned(case: Legit) -> None:
    result = validate_cohort_sql(case.sql)
    assert result.output_columns == case.columns
    assert result.tables == case.tables
    ctes = _cte_names(result.sql)
    for table in _tables_in(result.sql):
        assert table.db == "omop" or (not table.db and table.name in ctes), table.sql()
    # the output is a fixed point: validating what we execute changes nothing
    assert validate_cohort_sql(result.sql) == result


def test_unqualified_table_is_pinned_to_omop() -> None:
    assert validate_cohort_sql("SELECT person_id FROM person").sql == 'SELECT "person_id" FROM "omop"."person"'
    assert validate_cohort_sql("select PERSON_ID from Omop.PERSON p").sql == (
        'SELECT "person_id" FROM "omop"."person" AS "p"'
    )


def test_cte_names_are_not_rewritten_where_in_scope() -> None:
    text = validate_cohort_sql("WITH c AS (SELECT person_id FROM person) SELECT person_id FROM c").sql
    assert text == 'WITH "c" AS (SELECT "person_id" FROM "omop"."person") SELECT "person_id" FROM "c"'


def test_cte_names_are_rewritten_out_of_scope() -> None:
    # the CTE lives inside the subquery; the outer "c" is a table and must be pinned
    text = validate_cohort_sql("SELECT * FROM (WITH c AS (SELECT 1 AS x) SELECT x FROM c) s, c").sql
    assert text.endswith('FROM "c") AS "s", "omop"."c"')
    # a non-recursive CTE cannot see a later sibling: that "b" is a table
    text = validate_cohort_sql("WITH a AS (SELECT * FROM b), b AS (SELECT 1 AS x) SELECT * FROM a, b").sql
    assert 'WITH "a" AS (SELECT * FROM "omop"."b")' in text
    assert text.endswith('FROM "a", "b"')


def test_recursive_cte_sees_itself() -> None:
    text = validate_cohort_sql(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r"
    ).sql
    assert '"omop"' not in text


def test_quoted_identifiers_keep_their_case_and_unquoted_ones_fold() -> None:
    result = validate_cohort_sql('SELECT Person_Id AS "PersonId", Year_Of_Birth AS Yob FROM omop."Person"')
    assert result.sql == 'SELECT "person_id" AS "PersonId", "year_of_birth" AS "yob" FROM "omop"."Person"'
    assert result.output_columns == ("PersonId", "yob")
    assert result.tables == frozenset({"Person"})


def test_comments_are_dropped() -> None:
    text = validate_cohort_sql("SELECT /* hint */ person_id -- trailing\nFROM omop.person /* ; DROP */").sql
    assert text == 'SELECT "person_id" FROM "omop"."person"'


def test_sqlglot_comment_directives_are_ignored() -> None:
    """``/* sqlglot.meta ... */`` comments steer sqlglot; researcher input must not."""
    text = validate_cohort_sql("SELECT PERSON_ID /* sqlglot.meta case_sensitive */ FROM omop.person").sql
    assert text == 'SELECT "person_id" FROM "omop"."person"'


def test_keyword_like_names_are_quoted_in_the_output() -> None:
    # "user" quoted by the researcher is a column; emitted quoted, PostgreSQL cannot read current_user
    assert validate_cohort_sql('SELECT "user" FROM omop.person').sql == 'SELECT "user" FROM "omop"."person"'


def test_lossy_functions_are_emitted_verbatim() -> None:
    text = validate_cohort_sql(
        "SELECT to_char(d, 'FMDD Mon YYYY'), to_date('5 Dec 2000', 'DD Mon YYYY'), date_part('year', d) FROM t"
    ).sql
    assert "TO_CHAR(\"d\", 'FMDD Mon YYYY')" in text
    assert "TO_DATE('5 Dec 2000', 'DD Mon YYYY')" in text
    assert "DATE_PART('year', \"d\")" in text


def test_every_allowed_function_has_a_sample() -> None:
    assert set(FUNCTION_SAMPLES) == ALLOWED_FUNCTIONS


@pytest.mark.parametrize("name", sorted(FUNCTION_SAMPLES))
def test_allowed_function_sample_is_accepted(name: str) -> None:
    validate_cohort_sql(FUNCTION_SAMPLES[name])


def test_validated_query_is_immutable() -> None:
    result = validate_cohort_sql("SELECT person_id FROM person")
    assert isinstance(result, ValidatedQuery)
    with pytest.raises(AttributeError):
        result.sql = "DROP TABLE omop.person"  # type: ignore[misc]


# --- execution on a real PostgreSQL ---------------------------------------------------------------

DDL = """
CREATE SCHEMA omop;
CREATE TABLE omop.person (
    person_id bigint PRIMARY KEY, gender_concept_id integer NOT NULL, year_of_birth integer,
    gender_source_value text
);
CREATE TABLE omop.condition_occurrence (
    condition_occurrence_id bigserial PRIMARY KEY, person_id bigint NOT NULL, condition_concept_id integer NOT NULL,
    condition_start_date date NOT NULL
);
CREATE TABLE omop.concept (concept_id integer PRIMARY KEY, concept_name text NOT NULL);
INSERT INTO omop.person
    SELECT i, CASE WHEN i % 3 = 0 THEN 8507 ELSE 8532 END, 1935 + (i * 7) % 50,
           CASE WHEN i % 3 = 0 THEN 'M' WHEN i % 7 = 0 THEN NULL ELSE 'F' END
    FROM generate_series(1, 40) AS i;
INSERT INTO omop.condition_occurrence (person_id, condition_concept_id, condition_start_date)
    SELECT i, 201826, date '2020-01-01' + i * 11 FROM generate_series(1, 40) AS i WHERE i % 2 = 0;
INSERT INTO omop.condition_occurrence (person_id, condition_concept_id, condition_start_date)
    SELECT i, 4329847, date '2021-06-01' + i * 5 FROM generate_series(1, 40) AS i WHERE i % 5 = 0;
INSERT INTO omop.concept VALUES (201826, 'Type 2 diabetes mellitus'), (4329847, 'Myocardial_infarction');
-- a decoy: if unqualified names followed search_path, they would read this table instead
CREATE TABLE public.person (
    person_id bigint, gender_concept_id integer, year_of_birth integer, gender_source_value text, secret text
);
INSERT INTO public.person VALUES (900001, 8507, 1900, 'X', 'decoy'), (900002, 8507, 1900, 'X', 'decoy');
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    with throwaway_server("flip-cohort-sql-test-") as server:
        yield server


@pytest.fixture(scope="module")
def reader_dsn(pg: EmbeddedPostgres) -> str:
    """A database with the small OMOP schema and the decoy, and a read-only role that can read both."""
    with psycopg.connect(pg.libpq_dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE cohort_sql_test")
    with psycopg.connect(pg.libpq_dsn("cohort_sql_test"), autocommit=True) as conn:
        conn.execute(DDL)
        role = sql.Identifier(READER)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        for statement in (
            "GRANT USAGE ON SCHEMA omop TO {}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA omop TO {}",
            "GRANT SELECT ON public.person TO {}",  # so only the pinning keeps the decoy out
            "ALTER ROLE {} SET default_transaction_read_only = on",
        ):
            conn.execute(sql.SQL(statement).format(role))
    return f"host={pg.socket_dir} user={READER} dbname=cohort_sql_test"


@pytest.fixture(scope="module")
def conn(reader_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(reader_dsn) as connection:
        yield connection


def _run(conn: psycopg.Connection[Any], text: str, search_path: str | None = None) -> tuple[list[str], list[Any]]:
    """Rows (order-insensitive) and column names; executed without client-side parameters."""
    if search_path is not None:
        conn.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(search_path)))
    cur = conn.execute(text.encode())  # bytes: psycopg treats the text as opaque, never as a template
    names = [d.name for d in cur.description or ()]
    return names, sorted(cur.fetchall(), key=repr)


def _same_results(conn: psycopg.Connection[Any], original: str) -> tuple[ValidatedQuery, list[str], list[Any]]:
    """Run the original (reading omop via search_path) and the re-emitted SQL in one transaction (so
    now() agrees) and check they return the same columns and rows."""
    result = validate_cohort_sql(original)
    with conn.transaction(force_rollback=True):
        emitted_names, emitted_rows = _run(conn, result.sql)  # default search_path: "$user", public
        original_names, original_rows = _run(conn, original, search_path="omop")
    assert emitted_rows == original_rows
    assert emitted_names == original_names
    return result, emitted_names, emitted_rows


@pytest.mark.parametrize("case", LEGIT, ids=[q.label for q in LEGIT])
def test_legit_query_runs_and_means_the_same(conn: psycopg.Connection[Any], case: Legit) -> None:
    result, names, rows = _same_results(conn, case.sql)
    if result.output_columns is not None:
        assert list(result.output_columns) == names
    assert all(900001 not in row and "decoy" not in row for row in rows)


@pytest.mark.parametrize("name", sorted(FUNCTION_SAMPLES))
def test_allowed_function_means_the_same_after_re_emission(conn: psycopg.Connection[Any], name: str) -> None:
    _, _, rows = _same_results(conn, FUNCTION_SAMPLES[name])
    assert rows


def test_unqualified_person_reads_omop_not_public(conn: psycopg.Connection[Any]) -> None:
    original = "SELECT count(*) AS n, max(person_id) AS top FROM person"
    with conn.transaction(force_rollback=True):
        _, as_written = _run(conn, original)  # what PostgreSQL would do with the researcher's text
        _, as_emitted = _run(conn, validate_cohort_sql(original).sql)
    assert as_written == [(2, 900002)]
    assert as_emitted == [(40, 40)]


def test_cte_named_like_a_table_reads_the_cte(conn: psycopg.Connection[Any]) -> None:
    query = "WITH person AS (SELECT 7 AS person_id) SELECT person_id FROM person"
    with conn.transaction(force_rollback=True):
        _, rows = _run(conn, validate_cohort_sql(query).sql)
    assert rows == [(7,)]


# What PostgreSQL's attribute notation can reach: functions of one (non-defaulted) argument that accept
# a whole row.  Any of them missing from the validator's list would be a function call it never saw.
ROW_FUNCTIONS_SQL = """
SELECT DISTINCT p.proname FROM pg_proc p
WHERE p.prokind = 'f' AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1
  AND p.proargtypes[0] IN ('record'::regtype, 'anyelement'::regtype, 'anynonarray'::regtype,
                           'anycompatible'::regtype, 'anycompatiblenonarray'::regtype, '"any"'::regtype)
ORDER BY 1
"""


def test_attribute_notation_cannot_call_functions(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(force_rollback=True):
        names = [row[0] for row in conn.execute(ROW_FUNCTIONS_SQL)]
        assert "row_to_json" in names
        # the channel is real: this is a function call, written as a column
        assert conn.execute("SELECT p.to_json FROM omop.person p LIMIT 1").fetchone() is not None
    for name in names:
        if name in ALLOWED_FUNCTIONS:
            continue
        with pytest.raises(CohortSqlError) as caught:
            validate_cohort_sql(f"SELECT p.{name} FROM omop.person p")
        assert caught.value.rule == "function_not_allowed", name


def test_lookalike_text_stays_data(conn: psycopg.Connection[Any]) -> None:
    """Statement separators and keywords inside strings and comments are inert: nothing was dropped."""
    lookalike = next(q for q in LEGIT if q.label == "lookalike-strings-and-comments")
    _same_results(conn, lookalike.sql)
    with conn.transaction(force_rollback=True):
        _, rows = _run(conn, validate_cohort_sql("SELECT count(*) AS n FROM omop.person").sql)
    assert rows == [(40,)]


def test_emitted_sql_nests_as_a_subquery(conn: psycopg.Connection[Any]) -> None:
    """The data-access-api wraps the cohort query (``SELECT * FROM (<cohort>) AS cohort``); every legit
    query must survive that, ORDER BY / LIMIT / WITH included."""
    for case in LEGIT:
        inner = validate_cohort_sql(case.sql).sql
        with conn.transaction(force_rollback=True):
            _run(conn, f"SELECT count(*) FROM ({inner}) AS cohort")
