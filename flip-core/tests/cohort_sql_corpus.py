"""Inputs for the cohort SQL validator's tests: hostile queries (each with the rule that must refuse it)
and legitimate cohort queries (which must pass and run on a real PostgreSQL).

The legitimate queries use the small OMOP schema built in ``test_cohort_sql.py``.
"""

from __future__ import annotations

from typing import NamedTuple

from flip_core.cohort import MAX_SQL_CHARS


class Hostile(NamedTuple):
    label: str
    rule: str
    sql: str


class Legit(NamedTuple):
    label: str
    sql: str
    columns: tuple[str, ...] | None
    """Expected ``output_columns`` (``None`` where the names depend on PostgreSQL's implicit naming)."""
    tables: frozenset[str]


HOSTILE: list[Hostile] = [
    # --- length, emptiness, parse errors ---------------------------------------------------------
    Hostile("oversized", "too_long", "SELECT person_id FROM omop.person WHERE " + "1 = 1 AND " * 1100 + "TRUE"),
    Hostile("oversized-by-one", "too_long", "SELECT 1 " + " " * (MAX_SQL_CHARS - 8)),
    Hostile("empty", "empty", ""),
    Hostile("whitespace", "empty", " \n\t "),
    Hostile("line-comment-only", "empty", "-- SELECT person_id FROM omop.person"),
    Hostile("block-comment-only", "empty", "/* SELECT 1 */"),
    Hostile("nested-comment-only", "empty", "/* outer /* inner; DROP TABLE omop.person */ still comment */"),
    Hostile("semicolons-only", "empty", ";;"),
    Hostile("commented-semicolons", "empty", "/* a */ ; -- b\n; /* c */"),
    Hostile("syntax-error", "syntax_error", "SELECT FROM WHERE person_id ="),
    Hostile("unterminated-string", "syntax_error", "SELECT 'abc FROM omop.person"),
    Hostile("unterminated-comment", "syntax_error", "SELECT 1 /* never closed"),
    Hostile("unbalanced-nested-comment", "syntax_error", "SELECT 1 /* outer /* inner */ ; DROP TABLE omop.person"),
    Hostile("split-keyword", "syntax_error", "SEL/**/ECT person_id FROM omop.person"),
    Hostile("backslash-semicolon", "syntax_error", "SELECT 1 \\; DROP TABLE omop.person"),
    Hostile("underscore-number", "syntax_error", "SELECT 1_000 FROM omop.person"),
    # --- more than one statement -----------------------------------------------------------------
    Hostile("stacked-drop", "multiple_statements", "SELECT 1; DROP TABLE omop.person"),
    Hostile("stacked-select", "multiple_statements", "SELECT 1; SELECT 2"),
    Hostile("string-then-stacked", "multiple_statements", "SELECT ';' AS a; DELETE FROM omop.person"),
    Hostile(
        "comment-then-stacked", "multiple_statements", "SELECT 1 /* ; */; UPDATE omop.person SET year_of_birth = 1"
    ),
    Hostile("newline-after-line-comment", "multiple_statements", "SELECT 1 -- harmless\n; DROP TABLE omop.person"),
    Hostile("stacked-set", "multiple_statements", "SELECT 1; SET ROLE postgres"),
    Hostile("comments-around-stacked", "multiple_statements", "SELECT 1 /* */; /* */ DROP TABLE omop.person"),
    Hostile("dollar-string-then-stacked", "multiple_statements", "SELECT $$;$$; DROP TABLE omop.person"),
    # --- DML / DDL / other statements ------------------------------------------------------------
    Hostile("insert", "write_statement", "INSERT INTO omop.person (person_id) VALUES (1)"),
    Hostile("insert-select", "write_statement", "INSERT INTO omop.person SELECT * FROM omop.person"),
    Hostile("update", "write_statement", "UPDATE omop.person SET year_of_birth = 1900"),
    Hostile("delete", "write_statement", "DELETE FROM omop.person"),
    Hostile(
        "merge",
        "write_statement",
        "MERGE INTO omop.person p USING omop.person q ON p.person_id = q.person_id WHEN MATCHED THEN DELETE",
    ),
    Hostile("create-table", "write_statement", "CREATE TABLE public.x AS SELECT * FROM omop.person"),
    Hostile("create-function", "write_statement", "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql"),
    Hostile("drop", "write_statement", "DROP TABLE omop.person"),
    Hostile("alter", "write_statement", "ALTER TABLE omop.person ADD COLUMN x int"),
    Hostile("alter-role", "write_statement", "ALTER ROLE current_user SUPERUSER"),
    Hostile("truncate", "write_statement", "TRUNCATE omop.person"),
    Hostile("grant", "write_statement", "GRANT ALL ON omop.person TO PUBLIC"),
    Hostile("copy-to-file", "write_statement", "COPY omop.person TO '/tmp/person.csv'"),
    Hostile("copy-program", "write_statement", "COPY (SELECT 1) TO PROGRAM 'id'"),
    Hostile("copy-from", "write_statement", "COPY omop.person FROM '/etc/passwd'"),
    Hostile("set", "not_select", "SET search_path = public"),
    Hostile("set-role", "not_select", "SET ROLE postgres"),
    Hostile("reset", "not_select", "RESET ALL"),
    Hostile("show", "not_select", "SHOW data_directory"),
    Hostile("do-block", "not_select", "DO $$ BEGIN PERFORM pg_sleep(10); END $$"),
    Hostile("call", "not_select", "CALL some_procedure()"),
    Hostile("explain-analyze", "not_select", "EXPLAIN ANALYZE SELECT * FROM omop.person"),
    Hostile("vacuum", "not_select", "VACUUM omop.person"),
    Hostile("listen", "not_select", "LISTEN channel"),
    Hostile("notify", "not_select", "NOTIFY channel"),
    Hostile("begin", "not_select", "BEGIN"),
    # --- writes hidden inside a query ------------------------------------------------------------
    Hostile(
        "writable-cte-delete", "write_statement", "WITH x AS (DELETE FROM omop.person RETURNING *) SELECT * FROM x"
    ),
    Hostile(
        "writable-cte-update",
        "write_statement",
        "WITH x AS (UPDATE omop.person SET year_of_birth = 1 RETURNING person_id) SELECT person_id FROM x",
    ),
    Hostile(
        "writable-cte-insert",
        "write_statement",
        "WITH x AS (INSERT INTO omop.person (person_id) VALUES (9) RETURNING person_id) SELECT 1",
    ),
    Hostile(
        "nested-writable-cte",
        "write_statement",
        "SELECT * FROM (WITH x AS (DELETE FROM omop.person RETURNING person_id) SELECT * FROM x) s",
    ),
    Hostile("select-into", "select_into", "SELECT * INTO public.stolen FROM omop.person"),
    Hostile("select-into-temp", "select_into", "SELECT person_id INTO TEMP t FROM omop.person"),
    Hostile("for-update", "locking_clause", "SELECT * FROM omop.person FOR UPDATE"),
    Hostile("for-share", "locking_clause", "SELECT * FROM omop.person FOR SHARE"),
    Hostile("for-no-key-update-nowait", "locking_clause", "SELECT * FROM omop.person FOR NO KEY UPDATE NOWAIT"),
    Hostile("subquery-for-update", "locking_clause", "SELECT * FROM (SELECT person_id FROM omop.person FOR UPDATE) s"),
    # --- schemas ---------------------------------------------------------------------------------
    Hostile("pg-catalog", "schema_not_allowed", "SELECT rolpassword FROM pg_catalog.pg_authid"),
    Hostile("pg-shadow", "schema_not_allowed", "SELECT passwd FROM pg_catalog.pg_shadow"),
    Hostile("information-schema", "schema_not_allowed", "SELECT table_name FROM information_schema.tables"),
    Hostile("public", "schema_not_allowed", "SELECT * FROM public.person"),
    Hostile("quoted-pg-catalog", "schema_not_allowed", 'SELECT * FROM "pg_catalog"."pg_authid"'),
    Hostile("quoted-upper-omop", "schema_not_allowed", 'SELECT * FROM "OMOP".person'),
    Hostile("three-part", "schema_not_allowed", "SELECT * FROM postgres.omop.person"),
    Hostile("three-part-catalog", "schema_not_allowed", "SELECT * FROM otherdb.pg_catalog.pg_authid"),
    Hostile(
        "join-pg-catalog",
        "schema_not_allowed",
        "SELECT p.person_id FROM omop.person p JOIN pg_catalog.pg_roles r ON true",
    ),
    Hostile(
        "subquery-information-schema",
        "schema_not_allowed",
        "SELECT person_id FROM omop.person WHERE EXISTS (SELECT 1 FROM information_schema.columns)",
    ),
    Hostile("cte-body-public", "schema_not_allowed", "WITH x AS (SELECT * FROM public.secrets) SELECT * FROM x"),
    Hostile("column-schema", "schema_not_allowed", "SELECT public.person.secret FROM omop.person"),
    Hostile("dotted-quoted-identifier", "invalid_identifier", 'SELECT * FROM "omop.person"'),
    Hostile("dotted-quoted-pg-catalog", "invalid_identifier", 'SELECT * FROM "pg_catalog.pg_authid"'),
    Hostile("overlong-identifier", "invalid_identifier", "SELECT person_id AS " + "a" * 64 + " FROM omop.person"),
    # --- table-valued functions and VALUES -------------------------------------------------------
    Hostile("generate-series-from", "table_function", "SELECT * FROM generate_series(1, 1000000000)"),
    Hostile("pg-read-file-from", "table_function", "SELECT * FROM pg_read_file('/etc/passwd')"),
    Hostile("pg-ls-dir-from", "table_function", "SELECT * FROM pg_ls_dir('.')"),
    Hostile("unnest-from", "table_function", "SELECT * FROM unnest(ARRAY[1, 2])"),
    Hostile("rows-from", "table_function", "SELECT * FROM ROWS FROM (generate_series(1, 3))"),
    Hostile(
        "lateral-function", "table_function", "SELECT * FROM omop.person p, LATERAL generate_series(1, p.person_id) g"
    ),
    Hostile(
        "join-lateral-unnest", "table_function", "SELECT * FROM omop.person p JOIN LATERAL unnest(ARRAY[1]) u ON true"
    ),
    Hostile("dblink-from", "table_function", "SELECT * FROM dblink('host=evil', 'SELECT 1') AS t(a int)"),
    Hostile("values-table", "values_list", "SELECT * FROM (VALUES (1), (2)) AS v(x)"),
    Hostile("values-join", "values_list", "SELECT * FROM omop.person p JOIN (VALUES (1)) AS v(x) ON v.x = p.person_id"),
    # --- functions outside the allowlist ---------------------------------------------------------
    Hostile("query-to-xml", "function_not_allowed", "SELECT query_to_xml('SELECT * FROM pg_authid', true, true, '')"),
    Hostile("table-to-xml", "function_not_allowed", "SELECT table_to_xml('pg_authid', true, true, '')"),
    Hostile("database-to-xml", "function_not_allowed", "SELECT database_to_xml(true, true, '')"),
    Hostile("pg-read-file", "function_not_allowed", "SELECT pg_read_file('/etc/passwd')"),
    Hostile("pg-read-binary-file", "function_not_allowed", "SELECT pg_read_binary_file('/etc/passwd')"),
    Hostile("pg-ls-dir", "function_not_allowed", "SELECT pg_ls_dir('.')"),
    Hostile("pg-sleep", "function_not_allowed", "SELECT pg_sleep(60)"),
    Hostile("pg-sleep-comment-split", "function_not_allowed", "SELECT pg_sleep/**/(60)"),
    Hostile("pg-sleep-in-where", "function_not_allowed", "SELECT person_id FROM omop.person WHERE pg_sleep(1) IS NULL"),
    Hostile("pg-sleep-in-order", "function_not_allowed", "SELECT person_id FROM omop.person ORDER BY pg_sleep(1)"),
    Hostile("pg-sleep-in-cte", "function_not_allowed", "WITH x AS (SELECT pg_sleep(5)) SELECT * FROM x"),
    Hostile("pg-terminate-backend", "function_not_allowed", "SELECT pg_terminate_backend(1)"),
    Hostile("schema-qualified-pg-sleep", "function_not_allowed", "SELECT pg_catalog.pg_sleep(1)"),
    Hostile("schema-qualified-lower", "function_not_allowed", "SELECT pg_catalog.lower('A')"),
    Hostile("quoted-function-name", "function_not_allowed", 'SELECT "pg_sleep"(1)'),
    Hostile(
        "quoted-allowed-name",
        "function_not_allowed",
        'SELECT "age"(condition_start_date) FROM omop.condition_occurrence',
    ),
    Hostile("dblink", "function_not_allowed", "SELECT dblink_exec('host=evil', 'DROP TABLE x')"),
    Hostile("lo-import", "function_not_allowed", "SELECT lo_import('/etc/passwd')"),
    Hostile("lo-export", "function_not_allowed", "SELECT lo_export(1, '/tmp/x')"),
    Hostile("set-config", "function_not_allowed", "SELECT set_config('search_path', 'public', false)"),
    Hostile("current-setting", "function_not_allowed", "SELECT current_setting('data_directory')"),
    Hostile("version", "function_not_allowed", "SELECT version()"),
    Hostile("txid-current", "function_not_allowed", "SELECT txid_current()"),
    Hostile("pg-current-xact-id", "function_not_allowed", "SELECT pg_current_xact_id()"),
    Hostile("nextval", "function_not_allowed", "SELECT nextval('omop.some_seq')"),
    Hostile("setval", "function_not_allowed", "SELECT setval('omop.some_seq', 1)"),
    Hostile("current-user", "function_not_allowed", "SELECT current_user"),
    Hostile("current-user-parens-free-upper", "function_not_allowed", "SELECT CURRENT_USER AS who"),
    Hostile("session-user", "function_not_allowed", "SELECT session_user"),
    Hostile("bare-user", "function_not_allowed", "SELECT user"),
    Hostile("current-role", "function_not_allowed", "SELECT current_role"),
    Hostile("current-schema", "function_not_allowed", "SELECT current_schema()"),
    Hostile("current-catalog", "function_not_allowed", "SELECT current_catalog"),
    Hostile("inet-server-addr", "function_not_allowed", "SELECT inet_server_addr()"),
    Hostile("generate-series-select-list", "function_not_allowed", "SELECT generate_series(1, 1000000000)"),
    Hostile("unnest-select-list", "function_not_allowed", "SELECT unnest(ARRAY[1, 2, 3])"),
    Hostile("regexp-matches-select-list", "function_not_allowed", "SELECT regexp_matches('a', 'a', 'g')"),
    Hostile("json-agg", "function_not_allowed", "SELECT json_agg(p) FROM omop.person p"),
    Hostile("row-constructor", "function_not_allowed", "SELECT ROW(1, 2)"),
    Hostile("has-privilege", "function_not_allowed", "SELECT has_table_privilege('pg_authid', 'SELECT')"),
    Hostile("attribute-notation-to-json", "function_not_allowed", "SELECT p.to_json FROM omop.person p"),
    Hostile("attribute-notation-quoted", "function_not_allowed", 'SELECT "p"."row_to_json" FROM omop.person p'),
    Hostile("attribute-notation-schema", "function_not_allowed", "SELECT omop.person.pg_column_size FROM omop.person"),
    Hostile(
        "attribute-notation-volatile",
        "function_not_allowed",
        "SELECT p.pg_restore_relation_stats FROM omop.person p",
    ),
    Hostile("current-timestamp-precision", "function_not_allowed", "SELECT current_timestamp(2)"),
    Hostile(
        "function-in-join-on",
        "function_not_allowed",
        "SELECT p.person_id FROM omop.person p JOIN omop.concept c ON pg_sleep(1) IS NULL",
    ),
    Hostile(
        "function-in-limit-subquery",
        "non_literal_limit",
        "SELECT person_id FROM omop.person LIMIT (SELECT pg_sleep(1)::int)",
    ),
    # --- types -----------------------------------------------------------------------------------
    Hostile("regclass-cast", "type_not_allowed", "SELECT 'pg_authid'::regclass"),
    Hostile("regproc-cast", "type_not_allowed", "SELECT 'pg_sleep'::regproc"),
    Hostile("regtype-cast", "type_not_allowed", "SELECT CAST('int4' AS regtype)"),
    Hostile("regclass-typed-literal", "type_not_allowed", "SELECT regclass 'pg_authid'"),
    Hostile("oid-cast", "type_not_allowed", "SELECT 1::oid"),
    Hostile("other-schema-type", "type_not_allowed", "SELECT person_id::public.evil FROM omop.person"),
    Hostile("pg-catalog-type", "type_not_allowed", "SELECT person_id::pg_catalog.int4 FROM omop.person"),
    Hostile("json-cast", "type_not_allowed", "SELECT '{}'::json"),
    # --- LIMIT / OFFSET --------------------------------------------------------------------------
    Hostile("limit-subquery", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT (SELECT 1)"),
    Hostile("limit-expression", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT 1 + 1"),
    Hostile("limit-parameter", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT $1"),
    Hostile("limit-negative", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT -1"),
    Hostile("limit-string", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT '10'"),
    Hostile("limit-decimal", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT 1.5"),
    Hostile("limit-all", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT ALL"),
    Hostile("limit-null", "non_literal_limit", "SELECT person_id FROM omop.person LIMIT NULL"),
    Hostile(
        "offset-subquery",
        "non_literal_limit",
        "SELECT person_id FROM omop.person OFFSET (SELECT count(*) FROM omop.person)",
    ),
    Hostile("offset-parameter", "non_literal_limit", "SELECT person_id FROM omop.person OFFSET $2"),
    Hostile("fetch-expression", "non_literal_limit", "SELECT person_id FROM omop.person FETCH FIRST (2 * 3) ROWS ONLY"),
    Hostile(
        "nested-limit-expression",
        "non_literal_limit",
        "SELECT * FROM (SELECT person_id FROM omop.person LIMIT 5 * 5) s",
    ),
    # --- parameters ------------------------------------------------------------------------------
    Hostile("dollar-parameter", "parameter", "SELECT person_id FROM omop.person WHERE person_id = $1"),
    Hostile("pyformat-parameter", "parameter", "SELECT person_id FROM omop.person WHERE person_id = %(seed)s"),
    Hostile("question-parameter", "parameter", "SELECT person_id FROM omop.person WHERE person_id = ?"),
    # --- string forms ----------------------------------------------------------------------------
    Hostile("dollar-quoted", "string_syntax", "SELECT $$'; DROP TABLE omop.person; --$$ AS a"),
    Hostile("tagged-dollar-quoted", "string_syntax", "SELECT $x$ $$ ; DROP TABLE omop.person $x$ AS a"),
    Hostile("e-string", "string_syntax", "SELECT E'\\x41' AS a"),
    Hostile("e-string-quote-escape", "string_syntax", "SELECT E'\\'; DROP TABLE omop.person; --' AS a"),
    Hostile("lowercase-e-string", "string_syntax", "SELECT e'\\\\' AS a"),
    Hostile("backslash-quote", "string_syntax", "SELECT 'a\\' , 'b, pg_sleep(10)) --' AS a"),
    Hostile("backslash-like", "string_syntax", "SELECT person_id FROM omop.person WHERE 'a_b' LIKE 'a\\_b'"),
    Hostile("unicode-string", "string_syntax", "SELECT U&'\\0041' AS a"),
    Hostile("hex-string", "string_syntax", "SELECT X'1F' AS a"),
    Hostile("hex-number", "string_syntax", "SELECT 0x1F AS a"),
    Hostile("bit-string", "string_syntax", "SELECT B'101' AS a"),
    Hostile("binary-number", "string_syntax", "SELECT 0b101 FROM omop.person"),
    Hostile("national-string", "string_syntax", "SELECT N'abc' AS a"),
    # --- other syntax outside the allowlist ------------------------------------------------------
    Hostile("tablesample", "syntax_not_allowed", "SELECT * FROM omop.person TABLESAMPLE SYSTEM (10)"),
    Hostile("only", "syntax_not_allowed", "SELECT * FROM ONLY omop.person"),
    Hostile(
        "collate", "syntax_not_allowed", 'SELECT person_id FROM omop.person ORDER BY gender_source_value COLLATE "C"'
    ),
    Hostile("regex-operator", "syntax_not_allowed", "SELECT person_id FROM omop.person WHERE 'a' ~ '(a+)+$'"),
    Hostile("field-access", "syntax_not_allowed", "SELECT (p).person_id FROM omop.person p"),
    Hostile("array-subscript", "syntax_not_allowed", "SELECT (ARRAY[1, 2])[1] AS a"),
    Hostile(
        "extract-current-user",
        "function_not_allowed",
        "SELECT EXTRACT(current_user FROM condition_start_date) FROM omop.condition_occurrence",
    ),
    Hostile(
        "bad-extract-unit",
        "syntax_not_allowed",
        "SELECT EXTRACT(foo FROM condition_start_date) FROM omop.condition_occurrence",
    ),
    Hostile("bad-interval-unit", "syntax_not_allowed", "SELECT INTERVAL '1' foo AS a"),
    Hostile(
        "date-trunc-keyword-unit",
        "syntax_not_allowed",
        "SELECT date_trunc(user, condition_start_date) FROM omop.condition_occurrence",
    ),
    Hostile(
        "count-distinct-pair", "syntax_not_allowed", "SELECT count(DISTINCT person_id, year_of_birth) FROM omop.person"
    ),
]


LEGIT: list[Legit] = [
    Legit(
        "unqualified-table",
        "SELECT person_id FROM person",
        ("person_id",),
        frozenset({"person"}),
    ),
    Legit(
        "qualified-and-aliased",
        "SELECT p.person_id, p.year_of_birth FROM omop.person AS p WHERE p.year_of_birth >= 1950",
        ("person_id", "year_of_birth"),
        frozenset({"person"}),
    ),
    Legit(
        "join-concept",
        """
        SELECT co.person_id, c.concept_name AS condition
        FROM omop.condition_occurrence co
        JOIN omop.concept c ON c.concept_id = co.condition_concept_id
        WHERE c.concept_name = 'Type 2 diabetes mellitus'
        """,
        ("person_id", "condition"),
        frozenset({"condition_occurrence", "concept"}),
    ),
    Legit(
        "cte-unqualified",
        """
        WITH diabetics AS (
            SELECT DISTINCT person_id FROM condition_occurrence WHERE condition_concept_id = 201826
        )
        SELECT d.person_id, p.year_of_birth FROM diabetics d JOIN person p ON p.person_id = d.person_id
        """,
        ("person_id", "year_of_birth"),
        frozenset({"condition_occurrence", "person"}),
    ),
    Legit(
        "two-ctes-second-uses-first",
        """
        WITH a AS (SELECT person_id FROM omop.person WHERE gender_concept_id = 8507),
             b AS (SELECT person_id FROM a WHERE person_id % 2 = 0)
        SELECT person_id FROM b
        """,
        ("person_id",),
        frozenset({"person"}),
    ),
    Legit(
        "pivot-max-case",
        """
        SELECT p.person_id,
               MAX(CASE WHEN co.condition_concept_id = 201826 THEN 1 ELSE 0 END) AS has_t2dm,
               MAX(CASE WHEN co.condition_concept_id = 4329847 THEN co.condition_start_date END) AS mi_date
        FROM omop.person p
        LEFT JOIN omop.condition_occurrence co ON co.person_id = p.person_id
        GROUP BY p.person_id
        """,
        ("person_id", "has_t2dm", "mi_date"),
        frozenset({"person", "condition_occurrence"}),
    ),
    Legit(
        "window-first-diagnosis",
        """
        SELECT person_id, condition_start_date FROM (
            SELECT person_id, condition_start_date,
                   ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY condition_start_date) AS rn
            FROM omop.condition_occurrence
        ) ranked
        WHERE rn = 1
        """,
        ("person_id", "condition_start_date"),
        frozenset({"condition_occurrence"}),
    ),
    Legit(
        "window-functions",
        """
        SELECT person_id,
               rank() OVER w AS r, dense_rank() OVER w AS dr, ntile(4) OVER w AS quartile,
               lag(year_of_birth) OVER w AS prev_yob, lead(year_of_birth, 1) OVER w AS next_yob,
               first_value(year_of_birth) OVER w AS first_yob,
               last_value(year_of_birth) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS last_yob,
               count(*) OVER (PARTITION BY gender_concept_id) AS same_gender
        FROM omop.person
        WINDOW w AS (ORDER BY year_of_birth, person_id)
        """,
        ("person_id", "r", "dr", "quartile", "prev_yob", "next_yob", "first_yob", "last_yob", "same_gender"),
        frozenset({"person"}),
    ),
    Legit(
        "union",
        """
        SELECT person_id FROM omop.condition_occurrence WHERE condition_concept_id = 201826
        UNION
        SELECT person_id FROM omop.person WHERE year_of_birth < 1950
        """,
        ("person_id",),
        frozenset({"condition_occurrence", "person"}),
    ),
    Legit(
        "union-all-intersect-except",
        """
        (SELECT person_id FROM omop.person INTERSECT SELECT person_id FROM omop.condition_occurrence)
        EXCEPT
        SELECT person_id FROM omop.person WHERE gender_concept_id = 8532
        UNION ALL
        SELECT person_id FROM omop.person WHERE person_id = 1
        """,
        ("person_id",),
        frozenset({"condition_occurrence", "person"}),
    ),
    Legit(
        "exists-subquery",
        """
        SELECT p.person_id FROM omop.person p
        WHERE EXISTS (SELECT 1 FROM omop.condition_occurrence c WHERE c.person_id = p.person_id)
        """,
        ("person_id",),
        frozenset({"person", "condition_occurrence"}),
    ),
    Legit(
        "not-exists-and-in-subqueries",
        """
        SELECT person_id FROM person
        WHERE person_id IN (SELECT person_id FROM condition_occurrence WHERE condition_concept_id = 201826)
          AND NOT EXISTS (SELECT 1 FROM condition_occurrence c
                          WHERE c.person_id = person.person_id AND c.condition_concept_id = 4329847)
        """,
        ("person_id",),
        frozenset({"person", "condition_occurrence"}),
    ),
    Legit(
        "extract-age-at-diagnosis",
        """
        SELECT co.person_id,
               EXTRACT(YEAR FROM co.condition_start_date) - p.year_of_birth AS age_at_diagnosis,
               date_part('year', co.condition_start_date) AS diagnosis_year
        FROM omop.condition_occurrence co JOIN omop.person p USING (person_id)
        """,
        ("person_id", "age_at_diagnosis", "diagnosis_year"),
        frozenset({"condition_occurrence", "person"}),
    ),
    Legit(
        "date-arithmetic-intervals",
        """
        SELECT person_id, condition_start_date
        FROM omop.condition_occurrence
        WHERE condition_start_date >= DATE '2020-01-01' + INTERVAL '30 days'
          AND condition_start_date < '2022-12-31'::date - INTERVAL '1 year'
          AND condition_start_date + 7 > make_date(2020, 1, 15)
        """,
        ("person_id", "condition_start_date"),
        frozenset({"condition_occurrence"}),
    ),
    Legit(
        "age-function",
        """
        SELECT person_id,
               EXTRACT(YEAR FROM age(DATE '2024-06-30', make_date(year_of_birth, 7, 1)))::int AS age_years
        FROM omop.person
        WHERE age(DATE '2024-06-30', make_date(year_of_birth, 1, 1)) > INTERVAL '40 years'
        """,
        ("person_id", "age_years"),
        frozenset({"person"}),
    ),
    Legit(
        "count-distinct-group-having-order",
        """
        SELECT condition_concept_id, COUNT(DISTINCT person_id) AS persons, COUNT(*) AS events
        FROM omop.condition_occurrence
        GROUP BY condition_concept_id
        HAVING COUNT(DISTINCT person_id) >= 2
        ORDER BY persons DESC, condition_concept_id
        """,
        ("condition_concept_id", "persons", "events"),
        frozenset({"condition_occurrence"}),
    ),
    Legit(
        "limit-offset",
        "SELECT person_id FROM omop.person ORDER BY person_id LIMIT 100 OFFSET 10",
        ("person_id",),
        frozenset({"person"}),
    ),
    Legit(
        "fetch-first",
        "SELECT person_id FROM omop.person ORDER BY person_id OFFSET 2 ROWS FETCH FIRST 5 ROWS ONLY",
        ("person_id",),
        frozenset({"person"}),
    ),
    Legit(
        "select-star",
        "SELECT * FROM person WHERE year_of_birth BETWEEN 1940 AND 1960",
        None,
        frozenset({"person"}),
    ),
    Legit(
        "qualified-star",
        "SELECT p.* FROM omop.person p JOIN omop.condition_occurrence c ON c.person_id = p.person_id",
        None,
        frozenset({"person", "condition_occurrence"}),
    ),
    Legit(
        "casts-and-null-handling",
        """
        SELECT person_id::text AS pid_text, CAST(year_of_birth AS numeric(6, 1)) AS yob,
               COALESCE(gender_source_value, 'unknown') AS sex, NULLIF(gender_concept_id, 0) AS gender,
               person_id::bigint
        FROM omop.person
        WHERE gender_source_value IS NOT NULL AND year_of_birth IS NOT DISTINCT FROM year_of_birth
        """,
        ("pid_text", "yob", "sex", "gender", "person_id"),
        frozenset({"person"}),
    ),
    Legit(
        "string-functions",
        """
        SELECT concept_id AS person_id,
               lower(concept_name) AS lo, upper(concept_name) AS up, length(concept_name) AS len,
               substring(concept_name, 1, 4) AS sub, substr(concept_name, 2) AS sub2,
               trim('  ' || concept_name || '  ') AS trimmed, btrim(concept_name, 'T') AS bt,
               ltrim(concept_name, 'T') AS lt, rtrim(concept_name, 's') AS rt,
               concat(concept_name, '!') AS excl, replace(concept_name, ' ', '_') AS snake,
               left(concept_name, 3) AS l3, right(concept_name, 3) AS r3,
               position('diabetes' IN concept_name) AS pos, strpos(concept_name, 'a') AS sp,
               split_part(concept_name, ' ', 2) AS word2, starts_with(concept_name, 'Type') AS is_type,
               char_length(concept_name) AS cl
        FROM omop.concept
        WHERE concept_name ILIKE '%diabetes%' OR concept_name LIKE 'Myocardial#_%' ESCAPE '#'
        """,
        (
            "person_id",
            "lo",
            "up",
            "len",
            "sub",
            "sub2",
            "trimmed",
            "bt",
            "lt",
            "rt",
            "excl",
            "snake",
            "l3",
            "r3",
            "pos",
            "sp",
            "word2",
            "is_type",
            "cl",
        ),
        frozenset({"concept"}),
    ),
    Legit(
        "math-functions",
        """
        SELECT person_id,
               abs(year_of_birth - 2000) AS a, round(year_of_birth / 7.0, 2) AS r, round(1.5) AS r0,
               floor(year_of_birth / 10.0) AS f, ceil(year_of_birth / 10.0) AS c, ceiling(1.2) AS c2,
               trunc(year_of_birth / 3.0, 1) AS t, mod(year_of_birth, 10) AS m, power(2, 3) AS p,
               sqrt(year_of_birth) AS s, ln(year_of_birth) AS l, exp(1.0) AS e, sign(1950 - year_of_birth) AS sg,
               greatest(year_of_birth, 1950) AS g, least(year_of_birth, 1950) AS le, (year_of_birth + 5) % 3 AS m2
        FROM omop.person
        """,
        ("person_id", "a", "r", "r0", "f", "c", "c2", "t", "m", "p", "s", "l", "e", "sg", "g", "le", "m2"),
        frozenset({"person"}),
    ),
    Legit(
        "aggregates",
        """
        SELECT gender_concept_id AS person_id,
               count(*) AS n, sum(year_of_birth) AS s, avg(year_of_birth) AS a, min(year_of_birth) AS mn,
               max(year_of_birth) AS mx, round(stddev(year_of_birth), 6) AS sd,
               round(stddev_pop(year_of_birth), 6) AS sdp, round(stddev_samp(year_of_birth), 6) AS sds,
               round(variance(year_of_birth), 6) AS v, round(var_pop(year_of_birth), 6) AS vp,
               round(var_samp(year_of_birth), 6) AS vs, bool_and(year_of_birth > 1900) AS all_after,
               bool_or(year_of_birth > 1990) AS any_after,
               string_agg(DISTINCT gender_source_value, ',' ORDER BY gender_source_value) AS sexes,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY year_of_birth) AS median_yob,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY year_of_birth) AS median_disc,
               count(*) FILTER (WHERE year_of_birth < 1960) AS older
        FROM omop.person
        GROUP BY gender_concept_id
        """,
        (
            "person_id",
            "n",
            "s",
            "a",
            "mn",
            "mx",
            "sd",
            "sdp",
            "sds",
            "v",
            "vp",
            "vs",
            "all_after",
            "any_after",
            "sexes",
            "median_yob",
            "median_disc",
            "older",
        ),
        frozenset({"person"}),
    ),
    Legit(
        "date-functions",
        """
        SELECT person_id,
               date_trunc('month', condition_start_date)::date AS month,
               to_char(condition_start_date, 'YYYY-MM') AS ym, to_char(condition_start_date, 'FMDD Mon') AS dm,
               to_date('2021-03-04', 'YYYY-MM-DD') AS fixed, EXTRACT(DOW FROM condition_start_date) AS dow,
               condition_start_date - DATE '2020-01-01' AS days_since,
               current_date - condition_start_date > 0 AS in_past, now() > condition_start_date AS before_now
        FROM omop.condition_occurrence
        """,
        ("person_id", "month", "ym", "dm", "fixed", "dow", "days_since", "in_past", "before_now"),
        frozenset({"condition_occurrence"}),
    ),
    Legit(
        "cte-name-shadows-table",
        """
        WITH person AS (SELECT person_id, year_of_birth FROM omop.person WHERE year_of_birth < 1950)
        SELECT person_id FROM person
        """,
        ("person_id",),
        frozenset({"person"}),
    ),
    Legit(
        "cte-out-of-scope-is-a-table",
        """
        SELECT s.person_id FROM (WITH concept AS (SELECT 1 AS person_id) SELECT person_id FROM concept) s
        UNION
        SELECT concept_id FROM concept
        """,
        ("person_id",),
        frozenset({"concept"}),
    ),
    Legit(
        "recursive-cte",
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3)
        SELECT p.person_id FROM omop.person p JOIN n ON n.i = p.person_id
        """,
        ("person_id",),
        frozenset({"person"}),
    ),
    Legit(
        "lateral-subquery",
        """
        SELECT p.person_id, last.condition_start_date
        FROM omop.person p
        CROSS JOIN LATERAL (
            SELECT co.condition_start_date FROM omop.condition_occurrence co
            WHERE co.person_id = p.person_id ORDER BY co.condition_start_date DESC LIMIT 1
        ) AS last
        """,
        ("person_id", "condition_start_date"),
        frozenset({"person", "condition_occurrence"}),
    ),
    Legit(
        "scalar-subquery-any-array",
        """
        SELECT person_id, (SELECT count(*) FROM condition_occurrence c WHERE c.person_id = p.person_id) AS events
        FROM person p
        WHERE person_id = ANY (ARRAY[1, 2, 3, 5, 10]) AND gender_concept_id IN (8507, 8532)
        """,
        ("person_id", "events"),
        frozenset({"person", "condition_occurrence"}),
    ),
    Legit(
        "distinct-on-and-mixed-case",
        """
        SELECT DISTINCT ON (Person_ID) Person_ID, Condition_Start_Date AS "FirstDate"
        FROM OMOP.Condition_Occurrence
        ORDER BY Person_ID, Condition_Start_Date
        """,
        ("person_id", "FirstDate"),
        frozenset({"condition_occurrence"}),
    ),
    Legit(
        "case-grouping-sets",
        """
        SELECT CASE WHEN year_of_birth < 1960 THEN 'older' ELSE 'younger' END AS band,
               gender_concept_id, count(*) AS n
        FROM omop.person
        GROUP BY ROLLUP (1, gender_concept_id)
        """,
        ("band", "gender_concept_id", "n"),
        frozenset({"person"}),
    ),
    Legit(
        "lookalike-strings-and-comments",
        """
        -- a comment mentioning DROP TABLE omop.person; and pg_sleep(10)
        SELECT person_id, '; DROP TABLE omop.person; --' AS note, 'it''s /* not a comment */' AS quote
        FROM omop.person /* trailing ; comment */
        WHERE gender_source_value <> 'pg_catalog.pg_authid'
        """,
        ("person_id", "note", "quote"),
        frozenset({"person"}),
    ),
    Legit(
        "nested-comment-and-trailing-semicolon",
        "SELECT person_id /* outer /* nested; DROP TABLE omop.person */ still a comment */ FROM person; -- done",
        ("person_id",),
        frozenset({"person"}),
    ),
    Legit(
        "implicit-names",
        "SELECT person_id, count(*), year_of_birth + 1 FROM omop.person GROUP BY person_id, year_of_birth",
        None,
        frozenset({"person"}),
    ),
]


FUNCTION_SAMPLES: dict[str, str] = {
    # aggregates
    "count": "SELECT count(DISTINCT year_of_birth) AS v FROM omop.person",
    "sum": "SELECT sum(year_of_birth) AS v FROM omop.person",
    "avg": "SELECT avg(year_of_birth) AS v FROM omop.person",
    "min": "SELECT min(condition_start_date) AS v FROM omop.condition_occurrence",
    "max": "SELECT max(concept_name) AS v FROM omop.concept",
    "bool_and": "SELECT bool_and(year_of_birth > 1950) AS v FROM omop.person",
    "bool_or": "SELECT bool_or(year_of_birth > 1950) AS v FROM omop.person",
    "string_agg": "SELECT string_agg(concept_name, '; ' ORDER BY concept_id) AS v FROM omop.concept",
    "stddev": "SELECT stddev(year_of_birth) AS v FROM omop.person",
    "stddev_pop": "SELECT stddev_pop(year_of_birth) AS v FROM omop.person",
    "stddev_samp": "SELECT stddev_samp(year_of_birth) AS v FROM omop.person",
    "variance": "SELECT variance(year_of_birth) AS v FROM omop.person",
    "var_pop": "SELECT var_pop(year_of_birth) AS v FROM omop.person",
    "var_samp": "SELECT var_samp(year_of_birth) AS v FROM omop.person",
    "percentile_cont": "SELECT percentile_cont(0.25) WITHIN GROUP (ORDER BY year_of_birth) AS v FROM omop.person",
    "percentile_disc": "SELECT percentile_disc(0.75) WITHIN GROUP (ORDER BY year_of_birth) AS v FROM omop.person",
    # window functions
    "row_number": "SELECT person_id, row_number() OVER (ORDER BY person_id DESC) AS v FROM omop.person",
    "rank": "SELECT person_id, rank() OVER (ORDER BY year_of_birth) AS v FROM omop.person",
    "dense_rank": "SELECT person_id, dense_rank() OVER (ORDER BY year_of_birth) AS v FROM omop.person",
    "ntile": "SELECT person_id, ntile(3) OVER (ORDER BY person_id) AS v FROM omop.person",
    "lag": "SELECT person_id, lag(year_of_birth, 2, 0) OVER (ORDER BY person_id) AS v FROM omop.person",
    "lead": "SELECT person_id, lead(year_of_birth) OVER (ORDER BY person_id) AS v FROM omop.person",
    "first_value": "SELECT person_id, first_value(person_id) OVER (PARTITION BY gender_concept_id ORDER BY person_id) "
    "AS v FROM omop.person",
    "last_value": "SELECT person_id, last_value(person_id) OVER (ORDER BY person_id ROWS BETWEEN CURRENT ROW "
    "AND 2 FOLLOWING) AS v FROM omop.person",
    "nth_value": "SELECT person_id, nth_value(person_id, 2) OVER (ORDER BY person_id) AS v FROM omop.person",
    "percent_rank": "SELECT person_id, percent_rank() OVER (ORDER BY year_of_birth) AS v FROM omop.person",
    "cume_dist": "SELECT person_id, cume_dist() OVER (ORDER BY year_of_birth) AS v FROM omop.person",
    # scalar maths
    "abs": "SELECT abs(1970 - year_of_birth) AS v FROM omop.person",
    "round": "SELECT round(year_of_birth / 7.0, 3) AS v, round(2.5) AS w FROM omop.person",
    "floor": "SELECT floor(year_of_birth / 7.0) AS v FROM omop.person",
    "ceil": "SELECT ceil(year_of_birth / 7.0) AS v FROM omop.person",
    "ceiling": "SELECT ceiling(year_of_birth / 7.0) AS v FROM omop.person",
    "trunc": "SELECT trunc(year_of_birth / 7.0, 2) AS v, trunc(-2.7) AS w FROM omop.person",
    "mod": "SELECT mod(year_of_birth + 3, 7) * 2 AS v FROM omop.person",
    "power": "SELECT power(year_of_birth - 1900, 2) AS v FROM omop.person",
    "sqrt": "SELECT sqrt(year_of_birth) AS v FROM omop.person",
    "ln": "SELECT ln(year_of_birth) AS v FROM omop.person",
    "exp": "SELECT exp(year_of_birth / 1000.0) AS v FROM omop.person",
    "sign": "SELECT sign(1960 - year_of_birth) AS v FROM omop.person",
    "greatest": "SELECT greatest(year_of_birth, 1960, NULL) AS v FROM omop.person",
    "least": "SELECT least(year_of_birth, 1960) AS v FROM omop.person",
    # null handling
    "coalesce": "SELECT coalesce(gender_source_value, 'U') AS v FROM omop.person",
    "nullif": "SELECT nullif(gender_source_value, 'F') AS v FROM omop.person",
    # strings
    "lower": "SELECT lower(concept_name) AS v FROM omop.concept",
    "upper": "SELECT upper(concept_name) AS v FROM omop.concept",
    "length": "SELECT length(concept_name) AS v FROM omop.concept",
    "char_length": "SELECT char_length(concept_name) AS v FROM omop.concept",
    "substring": "SELECT substring(concept_name FROM 3 FOR 5) AS v, substring(concept_name, 2) AS w FROM omop.concept",
    "substr": "SELECT substr(concept_name, 3, 5) AS v FROM omop.concept",
    "trim": "SELECT trim(BOTH 'T' FROM concept_name) AS v, trim(LEADING FROM '  x ') AS w FROM omop.concept",
    "btrim": "SELECT btrim(concept_name, 'Ts') AS v FROM omop.concept",
    "ltrim": "SELECT ltrim(concept_name, 'TM') AS v, ltrim('  x') AS w FROM omop.concept",
    "rtrim": "SELECT rtrim(concept_name, 'sn') AS v FROM omop.concept",
    "concat": "SELECT concat(concept_name, NULL, '/', concept_id) AS v FROM omop.concept",
    "replace": "SELECT replace(concept_name, 'e', 'E') AS v FROM omop.concept",
    "left": "SELECT left(concept_name, 4) AS v FROM omop.concept",
    "right": "SELECT right(concept_name, -2) AS v FROM omop.concept",
    "position": "SELECT position('a' IN concept_name) AS v FROM omop.concept",
    "strpos": "SELECT strpos(concept_name, 'i') AS v FROM omop.concept",
    "split_part": "SELECT split_part(concept_name, ' ', 2) AS v FROM omop.concept",
    "starts_with": "SELECT starts_with(concept_name, 'Type') AS v FROM omop.concept",
    # dates
    "extract": "SELECT EXTRACT(ISODOW FROM condition_start_date) AS v, EXTRACT('month' FROM condition_start_date) AS w "
    "FROM omop.condition_occurrence",
    "date_part": "SELECT date_part('doy', condition_start_date) / 7 AS v FROM omop.condition_occurrence",
    "date_trunc": "SELECT date_trunc('quarter', condition_start_date) AS v FROM omop.condition_occurrence",
    "age": "SELECT age(DATE '2025-01-01', condition_start_date) AS v FROM omop.condition_occurrence",
    "make_date": "SELECT make_date(year_of_birth, 2, 28) AS v FROM omop.person",
    "to_date": "SELECT to_date('05 Dec 2000', 'DD Mon YYYY') AS v",
    "to_char": "SELECT to_char(condition_start_date, 'FMDay, DD HH12:MI:SS Mon YYYY \"Q\"Q') AS v "
    "FROM omop.condition_occurrence",
    "current_date": "SELECT current_date - condition_start_date AS v FROM omop.condition_occurrence",
    "now": "SELECT now() - condition_start_date AS v FROM omop.condition_occurrence",
}
"""One query per allowed function: each must validate and give the same result before and after re-emission."""
