"""The cohort SQL validator: the trust's security boundary for researcher-written SQL.

A cohort query is one PostgreSQL ``SELECT`` (optionally a set operation and ``WITH``) over the OMOP
tables.  :func:`validate_cohort_sql` parses it with sqlglot, checks every node of the tree against
allowlists, pins every table to schema ``omop`` and re-emits it.  The re-emitted text is the only SQL
a trust ever executes; the researcher's string is never sent to the database.  The hub runs the same
function as a pre-check so a researcher hears about a refused query before it travels to a trust.

Design choices (each one closes a hole a denylist would leave open):

* **Allowlists on the tree, never keyword lists on the text.**  Every node must be of a known
  harmless class (compared by exact type, so a dangerous subclass of an allowed class is refused);
  every function must be on :data:`ALLOWED_FUNCTIONS`; casts only to ordinary types.
* **Every identifier is emitted quoted**, after folding unquoted ones to lower case exactly as
  PostgreSQL does.  An identifier can then never be read as a keyword (``user`` is
  ``current_user`` to PostgreSQL when unquoted), and case folding cannot make names drift.
* **String forms whose meaning depends on lexer settings are refused**: ``E''``, ``$$``, ``U&''``,
  ``B''``/``X''`` and backslashes inside ``'...'`` (whose meaning flips with
  ``standard_conforming_strings``).  What remains lexes the same under any server setting.
* **The output is checked again**: the emitted text is parsed and validated a second time and must
  reproduce itself, so a sqlglot generator quirk cannot smuggle in anything the first pass did not see.
* **Functions whose sqlglot translation is lossy are kept verbatim** (``to_date``, ``to_char``,
  ``to_timestamp``, ``date_part``): sqlglot would otherwise rewrite their format strings or change
  their result type.

The executor must still run the SQL under a read-only role with a statement timeout; and because the
re-emitted text may contain ``%`` (the modulo operator, ``LIKE`` patterns), it must be composed into a
larger statement with ``%`` escaped, or executed without client-side parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError
from sqlglot.parsers.postgres import PostgresParser

from flip_core.cohort import MAX_SQL_CHARS

# sqlglot warns with the whole query text when it falls back to an unparsed command; researchers' SQL
# does not belong in service logs (the refusal reason is enough).
logging.getLogger("sqlglot").setLevel(logging.ERROR)

OMOP_SCHEMA = "omop"
"""The only schema a cohort query may read; unqualified tables are pinned to it."""
MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1); refusing them keeps names exact."""


class CohortSqlRule(StrEnum):
    """Why a cohort query was refused: stable machine names (``CohortSqlError.rule``)."""

    TOO_LONG = "too_long"
    EMPTY = "empty"
    SYNTAX_ERROR = "syntax_error"
    MULTIPLE_STATEMENTS = "multiple_statements"
    NOT_SELECT = "not_select"  # SET, SHOW, EXPLAIN, DO, CALL, VACUUM, LISTEN ... (anything but a query)
    WRITE_STATEMENT = "write_statement"  # DML or DDL anywhere in the tree, writable CTEs included
    SELECT_INTO = "select_into"
    LOCKING_CLAUSE = "locking_clause"  # FOR UPDATE / FOR SHARE ...
    SCHEMA_NOT_ALLOWED = "schema_not_allowed"  # a schema other than omop, or a three-part name
    INVALID_IDENTIFIER = "invalid_identifier"
    TABLE_FUNCTION = "table_function"  # a function (generate_series, unnest, ROWS FROM ...) used as a table
    VALUES_LIST = "values_list"
    FUNCTION_NOT_ALLOWED = "function_not_allowed"
    TYPE_NOT_ALLOWED = "type_not_allowed"  # casts to reg* / oid / types in other schemas ...
    NON_LITERAL_LIMIT = "non_literal_limit"
    PARAMETER = "parameter"  # $1, %(name)s, ? placeholders
    STRING_SYNTAX = "string_syntax"  # E'', $$...$$, U&'', B'', X'', N'' and backslashes in '...'
    SYNTAX_NOT_ALLOWED = "syntax_not_allowed"  # valid SQL outside the allowlist (TABLESAMPLE, COLLATE ...)
    TOO_COMPLEX = "too_complex"
    UNSTABLE = "unstable_sql"  # the re-emitted SQL did not reproduce itself (a sqlglot quirk)


class CohortSqlError(ValueError):
    """A refused cohort query: ``rule`` for machines, ``detail`` safe to show the researcher."""

    def __init__(self, rule: CohortSqlRule, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule: str = rule
        self.detail = detail


@dataclass(frozen=True)
class ValidatedQuery:
    """A cohort query that passed validation."""

    sql: str
    """The re-emitted PostgreSQL text: the ONLY thing ever executed."""
    output_columns: tuple[str, ...] | None
    """Output column names when statically known; ``None`` when ``*`` or an unaliased expression
    (whose name PostgreSQL makes up) is among the outputs."""
    tables: frozenset[str]
    """The omop tables referenced (unqualified names, CTE names excluded)."""


# --- allowlists -----------------------------------------------------------------------------------

ALLOWED_FUNCTIONS: frozenset[str] = frozenset(
    {
        # aggregates
        *("count", "sum", "avg", "min", "max", "bool_and", "bool_or", "string_agg"),
        *("stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp"),
        *("percentile_cont", "percentile_disc"),
        # window functions
        *("row_number", "rank", "dense_rank", "ntile", "lag", "lead", "first_value", "last_value"),
        *("nth_value", "percent_rank", "cume_dist"),
        # scalar maths
        *("abs", "round", "floor", "ceil", "ceiling", "trunc", "mod", "power", "sqrt", "ln", "exp", "sign"),
        *("greatest", "least"),
        # null handling
        *("coalesce", "nullif"),
        # strings
        *("lower", "upper", "length", "char_length", "substring", "substr", "trim", "btrim", "ltrim", "rtrim"),
        *("concat", "replace", "left", "right", "position", "strpos", "split_part", "starts_with"),
        # dates
        *("extract", "date_part", "date_trunc", "age", "make_date", "to_date", "to_char", "current_date", "now"),
    }
)
"""PostgreSQL functions a cohort query may call (plus CASE and CAST to :data:`ALLOWED_CAST_TYPES`)."""

# The sqlglot classes those functions parse into.  Compared by exact type: sqlglot turns any function
# it does not model into ``exp.Anonymous``, checked by name against ALLOWED_FUNCTIONS instead.
_FUNCTION_CLASSES: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.LogicalAnd, exp.LogicalOr, exp.GroupConcat,
        exp.Stddev, exp.StddevPop, exp.StddevSamp, exp.Variance, exp.VariancePop,
        exp.PercentileCont, exp.PercentileDisc,
        exp.RowNumber, exp.Rank, exp.DenseRank, exp.Ntile, exp.Lag, exp.Lead, exp.FirstValue, exp.LastValue,
        exp.NthValue, exp.PercentRank, exp.CumeDist,
        exp.Abs, exp.Round, exp.Floor, exp.Ceil, exp.Trunc, exp.Pow, exp.Sqrt, exp.Ln, exp.Exp, exp.Sign,
        exp.Greatest, exp.Least,
        exp.Coalesce, exp.Nullif,
        exp.Lower, exp.Upper, exp.Length, exp.Substring, exp.Trim, exp.Concat, exp.Replace, exp.Left, exp.Right,
        exp.StrPosition, exp.SplitPart, exp.StartsWith,
        exp.Extract, exp.TimestampTrunc, exp.CurrentDate, exp.CurrentTimestamp,
        # syntax sqlglot models as functions
        exp.Case, exp.If, exp.Cast, exp.Exists, exp.Array,
    }
)  # fmt: skip

# Everything else a cohort query may contain: query structure, operators and literals.
_SYNTAX_CLASSES: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery, exp.With, exp.CTE, exp.TableAlias,
        exp.From, exp.Join, exp.Lateral, exp.Table, exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered,
        exp.Limit, exp.Offset, exp.Fetch, exp.LimitOptions, exp.Distinct, exp.Window, exp.WindowSpec,
        exp.Filter, exp.WithinGroup, exp.Rollup, exp.Cube, exp.GroupingSets,
        exp.Identifier, exp.Column, exp.Star, exp.Alias, exp.Paren, exp.Tuple,
        exp.Literal, exp.Boolean, exp.Null, exp.Interval, exp.IntervalSpan, exp.Var, exp.DataType,
        exp.DataTypeParam,
        exp.And, exp.Or, exp.Not, exp.Neg, exp.Is, exp.In, exp.Between, exp.Any, exp.All,
        exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ,
        exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.DPipe, exp.Like, exp.ILike, exp.Escape,
    }
)  # fmt: skip

ALLOWED_CAST_TYPES: frozenset[exp.DType] = frozenset(
    {
        exp.DType.SMALLINT, exp.DType.INT, exp.DType.BIGINT, exp.DType.DECIMAL, exp.DType.FLOAT,
        exp.DType.DOUBLE, exp.DType.TEXT, exp.DType.VARCHAR, exp.DType.CHAR, exp.DType.BPCHAR,
        exp.DType.BOOLEAN, exp.DType.DATE, exp.DType.TIME, exp.DType.TIMESTAMP, exp.DType.TIMESTAMPTZ,
        exp.DType.INTERVAL, exp.DType.ARRAY,
    }
)  # fmt: skip
"""Types a value may be cast to (``ARRAY`` only of these).  Never ``reg*``/``oid``/user-defined types."""

# Date-part words: the only bare words (sqlglot ``Var``) emitted verbatim, inside EXTRACT / INTERVAL /
# date_trunc.  Anything else in that position could be a keyword PostgreSQL evaluates.
_DATE_PARTS = frozenset(
    {
        *("YEAR", "YEARS", "MONTH", "MONTHS", "WEEK", "WEEKS", "DAY", "DAYS", "HOUR", "HOURS"),
        *("MINUTE", "MINUTES", "SECOND", "SECONDS", "MILLISECOND", "MILLISECONDS", "MICROSECOND"),
        *("MICROSECONDS", "QUARTER", "DECADE", "CENTURY", "MILLENNIUM", "EPOCH", "DOW", "DOY", "ISODOW"),
        *("ISOYEAR", "JULIAN"),
    }
)
_DATE_PART_PARENTS = (exp.Extract, exp.Interval, exp.IntervalSpan, exp.TimestampTrunc)

# Words PostgreSQL evaluates as functions when written bare (no parentheses).  sqlglot reads some of
# them as column names; quoting would make them harmless, but refusing them gives a clear message.
_BARE_FUNCTION_WORDS = frozenset(
    {
        *("user", "current_user", "current_role", "session_user", "system_user", "current_catalog"),
        *("current_schema", "current_time", "current_timestamp", "current_date", "localtime"),
        "localtimestamp",
    }
)

# PostgreSQL reads ``t.f`` as the call ``f(t)`` when ``t`` has no column ``f`` ("attribute notation"),
# for any function of one argument that accepts a whole row (record, anyelement, "any" ...).  These are
# the pg_catalog functions of that shape outside ALLOWED_FUNCTIONS (derived from pg_proc; the tests
# re-derive the list from a real server and fail if one is missing).  A qualified column with one of
# these names is refused: it would be a function call the allowlist never saw.
_ROW_FUNCTIONS = frozenset(
    {
        *("any_out", "anycompatible_out", "anycompatiblenonarray_out", "anyelement_out", "anynonarray_out"),
        *("hash_record", "record_out"),
        *("record_send", "row_to_json", "to_json", "to_jsonb", "json_build_array", "json_build_object"),
        *("jsonb_build_array", "jsonb_build_object", "num_nonnulls", "num_nulls", "pg_collation_for"),
        *("pg_column_compression", "pg_column_size", "pg_column_toast_chunk_id", "pg_typeof", "quote_literal"),
        *("quote_nullable", "pg_restore_attribute_stats", "pg_restore_relation_stats"),
    }
)

_WRITE_STATEMENTS = (
    exp.DML, exp.DDL, exp.Drop, exp.Alter, exp.TruncateTable, exp.Grant, exp.Revoke, exp.Comment,
    exp.Analyze, exp.Refresh, exp.Cache, exp.Uncache, exp.LoadData,
)  # fmt: skip
_WRITE_KEYWORDS = frozenset(
    {"ALTER", "CREATE", "DROP", "GRANT", "REVOKE", "TRUNCATE", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY"}
    | {"COMMENT", "REINDEX", "CLUSTER", "REFRESH", "SECURITY", "IMPORT", "LOCK"}
)
_OTHER_STATEMENTS = (
    exp.Set, exp.Show, exp.Use, exp.Describe, exp.Transaction, exp.Commit, exp.Rollback, exp.Pragma, exp.Kill,
    exp.Execute, exp.Declare, exp.Command,
)  # fmt: skip
_QUERY_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery)

# Arguments these structural nodes may carry; any other (TABLESAMPLE, ONLY, QUALIFY, hints ...) is refused.
_ALLOWED_ARGS: dict[type[exp.Expr], frozenset[str]] = {
    exp.Select: frozenset(
        {"with_", "expressions", "distinct", "from_", "joins", "where", "group", "having", "windows", "order"}
        | {"limit", "offset"}
    ),
    exp.Subquery: frozenset({"this", "alias", "with_", "order", "limit", "offset"}),
    exp.Table: frozenset({"this", "db", "catalog", "alias", "joins"}),
    exp.Join: frozenset({"this", "on", "side", "kind", "using", "method"}),
    exp.Lateral: frozenset({"this", "alias"}),
    exp.With: frozenset({"expressions", "recursive"}),
    exp.CTE: frozenset({"this", "alias", "materialized"}),
    exp.Column: frozenset({"this", "table", "db", "catalog"}),
    exp.Star: frozenset(),
    exp.Cast: frozenset({"this", "to"}),
    exp.Limit: frozenset({"expression"}),
    exp.Offset: frozenset({"expression"}),
    exp.DataType: frozenset({"this", "expressions", "nested"}),
    **dict.fromkeys(
        (exp.Union, exp.Intersect, exp.Except),
        frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"}),
    ),
}

_ARG_NAMES = {
    "sample": "TABLESAMPLE",
    "only": "ONLY",
    "qualify": "QUALIFY",
    "hint": "optimizer hints",
    "ordinality": "WITH ORDINALITY",
    "search": "SEARCH",
    "cycle": "CYCLE",
    "format": "FORMAT",
}
_SYNTAX_NAMES: dict[type[exp.Expr], str] = {
    exp.Collate: "COLLATE",
    exp.TableSample: "TABLESAMPLE",
    exp.Bracket: "array subscripting",
    exp.Dot: "field access",
    exp.RegexpLike: "the ~ operator",
    exp.RegexpILike: "the ~* operator",
    exp.SimilarTo: "SIMILAR TO",
    exp.Kwarg: "a named argument (=>)",
}
_ALLOWED_CLASSES = _FUNCTION_CLASSES | _SYNTAX_CLASSES | {exp.Anonymous}
_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(name: str) -> str:
    """Case-fold an unquoted identifier as PostgreSQL does: ASCII letters only."""
    return name.translate(_ASCII_FOLD)


# --- the dialect ----------------------------------------------------------------------------------

_VERBATIM_FUNCTIONS = frozenset({"TO_CHAR", "TO_DATE", "TO_TIMESTAMP"})


class _CohortParser(PostgresParser):
    """PostgreSQL parsing, except that functions sqlglot would translate lossily stay verbatim calls.

    sqlglot maps ``to_char``/``to_date`` format strings to strftime codes and back (not a bijection)
    and rewrites ``date_part`` (double precision) as ``EXTRACT`` (numeric); as plain calls they are
    re-emitted exactly as written.
    """

    FUNCTIONS = {k: v for k, v in PostgresParser.FUNCTIONS.items() if k not in _VERBATIM_FUNCTIONS}
    FUNCTION_PARSERS = {k: v for k, v in PostgresParser.FUNCTION_PARSERS.items() if k != "DATE_PART"}


class _CohortPostgres(Postgres):
    Parser = _CohortParser


# --- validation -----------------------------------------------------------------------------------


def validate_cohort_sql(sql: str) -> ValidatedQuery:
    """Validate a researcher's cohort query and return the re-emitted SQL to execute.

    Raises :class:`CohortSqlError` naming the rule broken and the offending function, table or clause.
    """
    if len(sql) > MAX_SQL_CHARS:
        raise CohortSqlError(
            CohortSqlRule.TOO_LONG, f"the query is {len(sql)} characters long; the limit is {MAX_SQL_CHARS}"
        )
    first = _validate_once(sql)
    # Defence in depth: what we execute must itself validate and re-emit unchanged, so the text
    # PostgreSQL receives cannot differ from the tree checked above through a generator quirk.
    try:
        second = _validate_once(first.sql)
    except CohortSqlError as exc:
        raise CohortSqlError(
            CohortSqlRule.UNSTABLE, f"the query could not be re-emitted faithfully ({exc.detail}); please simplify it"
        ) from exc
    if second.sql != first.sql:
        raise CohortSqlError(CohortSqlRule.UNSTABLE, "the query could not be re-emitted faithfully; please simplify it")
    return first


def _validate_once(sql: str) -> ValidatedQuery:
    root = _parse_single(sql)
    try:
        _prepare(root)
        tables = _Checker().check(root)
        text = root.sql(dialect=_CohortPostgres, identify=True, comments=False, unsupported_level=ErrorLevel.RAISE)
    except RecursionError as exc:
        raise CohortSqlError(CohortSqlRule.TOO_COMPLEX, "the query is nested too deeply") from exc
    except CohortSqlError:
        raise
    except SqlglotError as exc:
        raise CohortSqlError(
            CohortSqlRule.SYNTAX_NOT_ALLOWED, "the query uses syntax that cannot be re-emitted"
        ) from exc
    return ValidatedQuery(sql=text, output_columns=_output_columns(root), tables=frozenset(tables))


def _parse_single(sql: str) -> exp.Expr:
    if not sql.strip():
        raise CohortSqlError(CohortSqlRule.EMPTY, "the query is empty")
    try:
        # Empty statements come back as None, or as Semicolon when they carry a comment.
        parsed = sqlglot.parse(sql, dialect=_CohortPostgres)
        statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    except ParseError as exc:
        raise CohortSqlError(CohortSqlRule.SYNTAX_ERROR, _describe_parse_error(exc)) from exc
    except RecursionError as exc:
        raise CohortSqlError(CohortSqlRule.TOO_COMPLEX, "the query is nested too deeply") from exc
    except SqlglotError as exc:  # TokenError: unterminated string, quoted identifier or comment
        raise CohortSqlError(
            CohortSqlRule.SYNTAX_ERROR, "the query could not be read (an unterminated string, identifier or comment?)"
        ) from exc
    if not statements:
        raise CohortSqlError(CohortSqlRule.EMPTY, "the query contains only comments or semicolons")
    if len(statements) > 1:
        raise CohortSqlError(
            CohortSqlRule.MULTIPLE_STATEMENTS,
            f"the query contains {len(statements)} statements; exactly one is allowed",
        )
    root = statements[0]
    if isinstance(root, _QUERY_ROOTS):
        return root
    if isinstance(root, _WRITE_STATEMENTS):
        raise CohortSqlError(CohortSqlRule.WRITE_STATEMENT, f"{_statement_name(root)} statements are not allowed")
    if isinstance(root, exp.Command):
        # Statements sqlglot does not model arrive unparsed; the keyword only chooses the message.
        rule = CohortSqlRule.WRITE_STATEMENT if _statement_name(root) in _WRITE_KEYWORDS else CohortSqlRule.NOT_SELECT
        raise CohortSqlError(rule, f"{_statement_name(root)} statements are not allowed")
    if isinstance(root, _OTHER_STATEMENTS):
        raise CohortSqlError(CohortSqlRule.NOT_SELECT, f"{_statement_name(root)} statements are not allowed")
    raise CohortSqlError(CohortSqlRule.NOT_SELECT, "only a single SELECT query is allowed")


def _describe_parse_error(exc: ParseError) -> str:
    if exc.errors:
        first = exc.errors[0]
        near = str(first.get("highlight") or "").strip()
        where = f"line {first.get('line')}, column {first.get('col')}"
        near_text = f' near "{_short(near)}"' if near else ""
        description = str(first.get("description") or "unexpected input")
        if "<Token" in description:  # sqlglot's repr of a token is no help to a researcher
            description = description.split(" but got ")[0]
        return f"syntax error at {where}{near_text}: {description}"
    return "syntax error"


def _prepare(root: exp.Expr) -> None:
    """Normalise the tree before checking: fold identifiers, drop sqlglot's comment directives."""
    for node in _walk(root):
        if isinstance(node, exp.Alias) and _glued_to_number(node):
            raise CohortSqlError(
                CohortSqlRule.SYNTAX_ERROR,
                f'"{node.this.name}{node.alias}": put a space or an operator after a number '
                "(1_000, 0b101 and 1abc are read differently by PostgreSQL versions)",
            )
        # ``/* sqlglot.meta k=v */`` comments set node metadata; researcher input must not steer sqlglot.
        if node._meta:  # reading .meta would create an empty dict on every node
            node._meta = None
        if isinstance(node, exp.Identifier) and not node.quoted:
            node.set("this", _fold(node.this))


def _glued_to_number(alias: exp.Alias) -> bool:
    """``1_000`` / ``0b101``: sqlglot reads a number with an implicit alias; PostgreSQL does not."""
    literal, name = alias.this, alias.args.get("alias")
    if not (isinstance(literal, exp.Literal) and not literal.is_string and isinstance(name, exp.Identifier)):
        return False
    end, start = literal.meta.get("end"), name.meta.get("start")
    return isinstance(end, int) and isinstance(start, int) and start == end + 1


def _walk(root: exp.Expr) -> Iterator[exp.Expr]:
    """Every node, parents first, without recursion (deep trees must not hit the recursion limit)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(node.iter_expressions())))


class _Checker:
    """One pass over the tree in document order, tracking which CTE names are in scope."""

    def __init__(self) -> None:
        self.tables: set[str] = set()

    def check(self, root: exp.Expr) -> set[str]:
        stack: list[tuple[exp.Expr, frozenset[str]]] = [(root, frozenset())]
        while stack:
            node, scope = stack.pop()
            self._check_node(node, scope)
            children: list[tuple[exp.Expr, frozenset[str]]] = []
            with_ = node.args.get("with_")
            if isinstance(with_, exp.With):
                self._check_node(with_, scope)
                scope = self._cte_scopes(with_, scope, children)
            children.extend((child, scope) for child in node.iter_expressions() if child is not with_)
            stack.extend(reversed(children))
        return self.tables

    @staticmethod
    def _cte_scopes(
        with_: exp.With, scope: frozenset[str], out: list[tuple[exp.Expr, frozenset[str]]]
    ) -> frozenset[str]:
        """Queue each CTE with the names visible in its body; return the scope of the main query.

        A CTE sees the ones before it (all of them under ``WITH RECURSIVE``, itself included).
        """
        ctes = [cte for cte in with_.expressions if isinstance(cte, exp.CTE)]
        if len(ctes) != len(with_.expressions):
            raise CohortSqlError(CohortSqlRule.SYNTAX_NOT_ALLOWED, "unexpected item in WITH")
        names = [cte.alias_or_name for cte in ctes]
        recursive = bool(with_.args.get("recursive"))
        for i, cte in enumerate(ctes):
            visible = names if recursive else names[:i]
            out.append((cte, scope | frozenset(visible)))
        return scope | frozenset(names)

    def _check_node(self, node: exp.Expr, scope: frozenset[str]) -> None:
        if isinstance(node, _WRITE_STATEMENTS):
            raise CohortSqlError(
                CohortSqlRule.WRITE_STATEMENT, f"{_statement_name(node)} is not allowed anywhere in a query"
            )
        if type(node) not in _ALLOWED_CLASSES:  # exact type: a subclass of an allowed class is not allowed
            _refuse(node)
        if isinstance(node, exp.DataType) and node.this not in ALLOWED_CAST_TYPES:
            # before the argument check: a user-defined type carries its schema in an extra argument
            raise CohortSqlError(
                CohortSqlRule.TYPE_NOT_ALLOWED, f"casts to {_short(node.sql('postgres'))} are not allowed"
            )
        self._check_args(node)
        if isinstance(node, exp.Table):
            self._check_table(node, scope)
        elif isinstance(node, (exp.From, exp.Join)):
            _check_source(node.this)
        elif isinstance(node, exp.Lateral):
            _check_source(node)
        elif isinstance(node, exp.CTE):
            _check_cte(node)
        elif isinstance(node, exp.Column):
            _check_column(node)
        elif isinstance(node, exp.Identifier):
            _check_identifier(node)
        elif isinstance(node, exp.Literal):
            _check_literal(node)
        elif isinstance(node, exp.Var):
            if not isinstance(node.parent, _DATE_PART_PARENTS) or node.name.upper() not in _DATE_PARTS:
                raise CohortSqlError(CohortSqlRule.SYNTAX_NOT_ALLOWED, f'"{_short(node.name)}" is not allowed here')
        elif isinstance(node, (exp.Limit, exp.Offset)):
            _check_count(node.expression, "LIMIT" if isinstance(node, exp.Limit) else "OFFSET")
        elif isinstance(node, exp.Fetch):
            if node.args.get("count") is not None:
                _check_count(node.args["count"], "FETCH")
        elif isinstance(node, exp.LimitOptions):
            if node.args.get("percent"):
                raise CohortSqlError(CohortSqlRule.NON_LITERAL_LIMIT, "FETCH ... PERCENT is not allowed")
        elif isinstance(node, exp.Distinct):
            if isinstance(node.parent, exp.Func) and len(node.expressions) > 1:
                raise CohortSqlError(CohortSqlRule.SYNTAX_NOT_ALLOWED, "DISTINCT over several arguments in a function")
        elif isinstance(node, exp.Anonymous):
            _check_anonymous(node)
        elif isinstance(node, exp.CurrentTimestamp) and node.this is not None:
            # sqlglot drops the precision on output, which would change the result
            raise CohortSqlError(CohortSqlRule.FUNCTION_NOT_ALLOWED, "current_timestamp(precision) is not allowed")

    @staticmethod
    def _check_args(node: exp.Expr) -> None:
        if isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
            if node.args.get("into"):
                raise CohortSqlError(CohortSqlRule.SELECT_INTO, "SELECT ... INTO is not allowed")
            if node.args.get("locks"):
                raise CohortSqlError(CohortSqlRule.LOCKING_CLAUSE, "FOR UPDATE / FOR SHARE clauses are not allowed")
        allowed = _ALLOWED_ARGS.get(type(node))
        if allowed is None:
            return
        for key, value in node.args.items():
            if key in allowed or value is None or value is False or value == []:
                continue
            if key == "rows_from":
                raise CohortSqlError(CohortSqlRule.TABLE_FUNCTION, "ROWS FROM (...) is not allowed")
            raise CohortSqlError(CohortSqlRule.SYNTAX_NOT_ALLOWED, f"{_ARG_NAMES.get(key, key)} is not allowed")

    def _check_table(self, table: exp.Table, scope: frozenset[str]) -> None:
        name = table.this
        if not isinstance(name, exp.Identifier):
            raise CohortSqlError(
                CohortSqlRule.TABLE_FUNCTION, f"function {_function_name(name)} cannot be used as a table"
            )
        if table.args.get("catalog") is not None:
            raise CohortSqlError(
                CohortSqlRule.SCHEMA_NOT_ALLOWED, f'"{_short(table.sql("postgres"))}": three-part names are not allowed'
            )
        if "." in name.name:
            raise CohortSqlError(
                CohortSqlRule.INVALID_IDENTIFIER,
                f'table name "{_short(name.name)}" contains a dot; write the schema separately, e.g. omop.person',
            )
        alias = table.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.this is None and alias.columns:
            # sqlglot reads some calls in FROM (``file('x')``) as a nameless alias with a column list
            raise CohortSqlError(
                CohortSqlRule.TABLE_FUNCTION, f"function {_short(name.name)} cannot be used as a table"
            )
        db = table.args.get("db")
        if db is not None:
            if not isinstance(db, exp.Identifier) or db.name != OMOP_SCHEMA:
                raise CohortSqlError(
                    CohortSqlRule.SCHEMA_NOT_ALLOWED,
                    f'table "{_short(db.name)}.{_short(name.name)}": only schema {OMOP_SCHEMA} may be queried',
                )
        elif name.name in scope:
            return  # a CTE of this query: PostgreSQL resolves it before any schema
        else:
            # Unqualified names would follow search_path, which puts pg_catalog first.
            table.set("db", exp.to_identifier(OMOP_SCHEMA))
        self.tables.add(name.name)


def _check_cte(cte: exp.CTE) -> None:
    body = cte.this
    if isinstance(body, _WRITE_STATEMENTS):
        raise CohortSqlError(
            CohortSqlRule.WRITE_STATEMENT, f'CTE "{_short(cte.alias_or_name)}": {_statement_name(body)} is not allowed'
        )
    if not isinstance(body, _QUERY_ROOTS):
        raise CohortSqlError(CohortSqlRule.SYNTAX_NOT_ALLOWED, f'CTE "{_short(cte.alias_or_name)}" must be a query')


def _check_source(source: exp.Expr | None) -> None:
    """A FROM / JOIN item must be a table, a subquery or a LATERAL subquery."""
    if isinstance(source, exp.Lateral):
        source = source.this
        if not isinstance(source, exp.Subquery):
            raise CohortSqlError(
                CohortSqlRule.TABLE_FUNCTION,
                f"LATERAL {_function_name(source)}(...) is not allowed; use a LATERAL subquery",
            )
    if isinstance(source, exp.Values):
        raise CohortSqlError(CohortSqlRule.VALUES_LIST, "VALUES lists are not allowed as tables")
    if not isinstance(source, (exp.Table, exp.Subquery)):
        raise CohortSqlError(
            CohortSqlRule.TABLE_FUNCTION, f"function {_function_name(source)} cannot be used as a table"
        )


def _check_column(column: exp.Column) -> None:
    name = column.this
    if not isinstance(name, (exp.Identifier, exp.Star)):
        raise CohortSqlError(CohortSqlRule.SYNTAX_ERROR, f'"{_short(column.sql("postgres"))}" is not a column name')
    if isinstance(name, exp.Identifier):
        if not column.table and not name.quoted and name.name in _BARE_FUNCTION_WORDS:
            raise CohortSqlError(CohortSqlRule.FUNCTION_NOT_ALLOWED, f"{name.name} is not allowed")
        if column.table and name.name in _ROW_FUNCTIONS:
            raise CohortSqlError(
                CohortSqlRule.FUNCTION_NOT_ALLOWED,
                f'"{_short(column.sql("postgres"))}" would call the function {name.name} (attribute notation)',
            )
    if column.args.get("catalog") is not None:
        raise CohortSqlError(
            CohortSqlRule.SCHEMA_NOT_ALLOWED, f'"{_short(column.sql("postgres"))}": four-part names are not allowed'
        )
    db = column.args.get("db")
    if db is not None and (not isinstance(db, exp.Identifier) or db.name != OMOP_SCHEMA):
        raise CohortSqlError(
            CohortSqlRule.SCHEMA_NOT_ALLOWED,
            f'column "{_short(column.sql("postgres"))}": only schema {OMOP_SCHEMA} may be queried',
        )


def _check_identifier(identifier: exp.Identifier) -> None:
    name = identifier.name
    if not name or "\x00" in name:
        raise CohortSqlError(CohortSqlRule.INVALID_IDENTIFIER, "empty identifiers and NUL characters are not allowed")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise CohortSqlError(
            CohortSqlRule.INVALID_IDENTIFIER,
            f'identifier "{_short(name)}" is longer than {MAX_IDENTIFIER_BYTES} bytes (PostgreSQL would truncate it)',
        )


def _check_literal(literal: exp.Literal) -> None:
    if literal.is_string and ("\\" in literal.this or "\x00" in literal.this):
        # A backslash means different things under standard_conforming_strings on and off; refusing it
        # makes the emitted text mean one thing under either setting.  LIKE has ESCAPE for its own use.
        raise CohortSqlError(
            CohortSqlRule.STRING_SYNTAX,
            "backslashes and NUL characters are not allowed in strings (for LIKE use ESCAPE: LIKE 'a#_%' ESCAPE '#')",
        )


def _check_count(value: exp.Expr | None, clause: str) -> None:
    """LIMIT / OFFSET / FETCH take a non-negative integer literal: no expressions, subqueries or parameters."""
    if not (
        isinstance(value, exp.Literal)
        and not value.is_string
        and value.this
        and all(c in "0123456789" for c in value.this)
    ):
        shown = _short(value.sql("postgres")) if value is not None else "nothing"
        raise CohortSqlError(
            CohortSqlRule.NON_LITERAL_LIMIT, f"{clause} must be a non-negative whole number, not {shown}"
        )


def _check_anonymous(func: exp.Anonymous) -> None:
    """A function sqlglot does not model: allowed by its (case-folded) name only."""
    if isinstance(func.this, exp.Identifier):
        # sqlglot upper-cases quoted function names on output; "age" and "AGE" differ in PostgreSQL.
        raise CohortSqlError(
            CohortSqlRule.FUNCTION_NOT_ALLOWED, f'quoted function name "{_short(func.name)}" is not allowed'
        )
    name = _fold(func.name)
    if name not in ALLOWED_FUNCTIONS:
        raise CohortSqlError(CohortSqlRule.FUNCTION_NOT_ALLOWED, f"function {_short(name)} is not allowed")


def _refuse(node: exp.Expr) -> None:
    """Raise the most specific rule for a node outside every allowlist."""
    if isinstance(node, exp.Values):
        raise CohortSqlError(CohortSqlRule.VALUES_LIST, "VALUES lists are not allowed")
    if isinstance(node, (exp.Into,)):
        raise CohortSqlError(CohortSqlRule.SELECT_INTO, "SELECT ... INTO is not allowed")
    if isinstance(node, exp.Lock):
        raise CohortSqlError(CohortSqlRule.LOCKING_CLAUSE, "FOR UPDATE / FOR SHARE clauses are not allowed")
    if isinstance(node, (exp.Placeholder, exp.Parameter)):
        raise CohortSqlError(CohortSqlRule.PARAMETER, "parameters ($1, %(name)s, ?) are not allowed; write the value")
    if isinstance(node, exp.ObjectIdentifier):
        raise CohortSqlError(CohortSqlRule.TYPE_NOT_ALLOWED, f"casts to {_short(node.name)} are not allowed")
    if isinstance(node, (exp.ByteString, exp.RawString, exp.UnicodeString, exp.National, exp.HexString, exp.BitString)):
        raise CohortSqlError(CohortSqlRule.STRING_SYNTAX, f"{_STRING_FORMS[type(node)]} are not allowed; use '...'")
    if isinstance(node, _OTHER_STATEMENTS):
        raise CohortSqlError(CohortSqlRule.NOT_SELECT, f"{_statement_name(node)} is not allowed")
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        raise CohortSqlError(
            CohortSqlRule.FUNCTION_NOT_ALLOWED,
            f'schema-qualified function "{_short(node.sql("postgres"))}" is not allowed',
        )
    syntax = _SYNTAX_NAMES.get(type(node))
    if syntax is None and isinstance(node, exp.Func):
        raise CohortSqlError(CohortSqlRule.FUNCTION_NOT_ALLOWED, f"function {_function_name(node)} is not allowed")
    raise CohortSqlError(
        CohortSqlRule.SYNTAX_NOT_ALLOWED, f"{syntax or node.key.upper()} is not allowed in a cohort query"
    )


_STRING_FORMS: dict[type[exp.Expr], str] = {
    exp.ByteString: "E'...' escape strings",
    exp.RawString: "dollar-quoted strings ($$...$$)",
    exp.UnicodeString: "U&'...' strings",
    exp.National: "N'...' strings",
    exp.HexString: "hexadecimal literals (X'...', 0x...)",
    exp.BitString: "bit strings (B'...')",
}


def _function_name(node: exp.Expr | None) -> str:
    """The name a researcher would recognise for a refused function (as PostgreSQL would be sent it)."""
    if node is None:
        return "this"
    if isinstance(node, exp.Anonymous):
        return _short(_fold(node.name))
    try:
        emitted = node.sql(dialect=_CohortPostgres)
    except SqlglotError:
        emitted = node.key
    return _short(emitted.split("(", 1)[0].strip().lower() or node.key)


def _statement_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return _short(str(node.this).upper())
    return {"truncatetable": "TRUNCATE", "loaddata": "LOAD DATA", "transaction": "BEGIN"}.get(
        node.key, node.key.upper()
    )


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _output_columns(root: exp.Expr) -> tuple[str, ...] | None:
    """The output names PostgreSQL will report, where they do not depend on its implicit naming."""
    query = root
    while isinstance(query, (exp.Subquery, exp.SetOperation)):
        query = query.this  # a set operation takes its column names from its first branch
    if not isinstance(query, exp.Select):
        return None
    names: list[str] = []
    for projection in query.expressions:
        if isinstance(projection, exp.Alias):
            names.append(projection.alias)
            continue
        column = projection.this if isinstance(projection, exp.Cast) else projection  # x::int is still "x"
        if not isinstance(column, exp.Column) or isinstance(column.this, exp.Star):
            return None
        names.append(column.name)
    return tuple(names)
