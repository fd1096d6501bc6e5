"""Cohort statistics: one pass of the researcher's (validated) query, aggregated inside PostgreSQL.

The cohort query runs once, as a materialised CTE; PostgreSQL reduces it to a handful of *cells* — the
number of distinct persons in a set and the set's cell key (see :mod:`flip_data_access.gate`) — and
only those cells come back to Python, where the disclosure gate turns them into releasable counts.  No
row of the cohort is ever fetched to compute statistics.

Cells returned (all of them counts of distinct persons):

* the whole cohort;
* per output column, persons with a value (``non_null``) and persons with a missing value (``null``);
* persons per sex and per ten-year age band (from ``omop.person``);
* persons per combination of imaging modalities (from ``omop.image_occurrence``), so that "persons with
  a CT" and the ``Other`` bucket of merged modalities can both be counted exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from flip_core.cohort import PERSON_COLUMN
from flip_data_access.gate import KEY_SPACE, Cell

SEX_LABELS = {8507: "Male", 8532: "Female"}
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class CohortCells:
    """What the statistics query found, before the gate."""

    total: Cell
    non_null: dict[str, Cell]
    null: dict[str, Cell]
    sex: list[tuple[str, Cell]]
    age: list[tuple[str, Cell]]
    modality_combos: list[tuple[frozenset[str], Cell]]

    def modality_cells(self) -> list[tuple[str, Cell]]:
        """Persons with at least one image of each modality."""
        labels = sorted({m for combo, _ in self.modality_combos for m in combo})
        return [(label, self.any_modality([label])) for label in labels]

    def any_modality(self, labels: Sequence[str]) -> Cell:
        """Persons with an image of any of ``labels`` (exact: each person is in one combination)."""
        wanted = set(labels)
        return Cell.union(cell for combo, cell in self.modality_combos if combo & wanted)


def record_key(column: sql.Composable, seed: int) -> sql.Composed:
    """The SQL for a person's secret record key in ``[0, 2³²)``.

    The seed is inlined as a literal rather than bound: the statement then carries no parameters, so a
    ``%`` in the researcher's SQL (modulo, ``LIKE 'x%'``) is never mistaken for a placeholder.
    """
    return sql.SQL("(hashint8extended(({})::bigint, {}::bigint) & {})").format(
        column, sql.Literal(seed), sql.Literal(KEY_SPACE - 1)
    )


def statistics_sql(cohort_sql: str, columns: Sequence[str], seed: int) -> sql.Composed:
    """One statement returning every cell of the cohort as JSON (see the module docstring)."""
    person = sql.Identifier(PERSON_COLUMN)
    flags = []
    for i, name in enumerate(columns):
        col = sql.Identifier(name)
        flags.append(sql.SQL("bool_or({} IS NOT NULL) AS {}").format(col, sql.Identifier(f"nn_{i}")))
        flags.append(sql.SQL("bool_or({} IS NULL) AS {}").format(col, sql.Identifier(f"nl_{i}")))
    column_cells = []
    for i, name in enumerate(columns):
        for kind in ("nn", "nl"):
            flag = sql.Identifier(f"{kind}_{i}")
            column_cells.append(
                sql.SQL(
                    "{}, json_build_array(count(*) FILTER (WHERE {}), coalesce(sum(rk) FILTER (WHERE {}), 0))"
                ).format(sql.Literal(f"{kind}:{name}"), flag, flag)
            )
    return sql.SQL(
        """
WITH cohort AS MATERIALIZED ({cohort}),
persons AS MATERIALIZED (
    SELECT {person} AS person_id, {rk} AS rk{flags}
    FROM cohort
    WHERE {person} IS NOT NULL
    GROUP BY {person}
),
demo AS (
    SELECT p.rk, per.gender_concept_id AS gender,
           CASE WHEN per.year_of_birth IS NULL THEN NULL
                ELSE LEAST(9, GREATEST(0, (EXTRACT(YEAR FROM current_date)::int - per.year_of_birth) / 10))
           END AS band
    FROM persons p LEFT JOIN omop.person per ON per.person_id = p.person_id
),
mods AS (
    SELECT p.rk, array_agg(DISTINCT io.modality_source_value ORDER BY io.modality_source_value) AS combo
    FROM persons p JOIN omop.image_occurrence io ON io.person_id = p.person_id
    WHERE io.modality_source_value IS NOT NULL
    GROUP BY p.person_id, p.rk
)
SELECT
    (SELECT json_build_array(count(*), coalesce(sum(rk), 0)) FROM persons) AS total,
    (SELECT json_build_object({column_cells}) FROM persons) AS columns,
    (SELECT coalesce(json_agg(json_build_array(gender, n, k)), '[]') FROM
        (SELECT gender, count(*) AS n, sum(rk) AS k FROM demo GROUP BY gender) s) AS sex,
    (SELECT coalesce(json_agg(json_build_array(band, n, k)), '[]') FROM
        (SELECT band, count(*) AS n, sum(rk) AS k FROM demo GROUP BY band) a) AS age,
    (SELECT coalesce(json_agg(json_build_array(combo, n, k)), '[]') FROM
        (SELECT combo, count(*) AS n, sum(rk) AS k FROM mods GROUP BY combo) m) AS modalities
"""
    ).format(
        cohort=sql.SQL(cohort_sql),  # the validator's re-emitted SQL, never the caller's text
        person=person,
        rk=record_key(person, seed),
        flags=sql.SQL("").join(sql.SQL(", ") + f for f in flags),
        column_cells=sql.SQL(", ").join(column_cells) if column_cells else sql.SQL("'none', NULL"),
    )


def _cell(n: Any, key: Any) -> Cell:
    return Cell(int(n), int(key) % KEY_SPACE)


def _age_label(band: int | None) -> str:
    if band is None:
        return UNKNOWN
    return "90+" if band >= 9 else f"{band * 10}-{band * 10 + 9}"


def parse_cells(row: Sequence[Any], columns: Sequence[str]) -> CohortCells:
    """Turn the statistics query's single row into :class:`CohortCells`."""
    total_json, columns_json, sex_json, age_json, mods_json = row
    non_null: dict[str, Cell] = {}
    null: dict[str, Cell] = {}
    for name in columns:
        non_null[name] = _cell(*columns_json[f"nn:{name}"])
        null[name] = _cell(*columns_json[f"nl:{name}"])
    sex: dict[str, Cell] = {}
    for gender, n, key in sex_json:
        label = SEX_LABELS.get(gender, UNKNOWN) if gender is not None else UNKNOWN
        sex[label] = Cell.union([sex[label], _cell(n, key)]) if label in sex else _cell(n, key)
    age = sorted(((_age_label(band), _cell(n, key)) for band, n, key in age_json), key=lambda item: item[0])
    combos = [(frozenset(combo), _cell(n, key)) for combo, n, key in mods_json]
    return CohortCells(
        total=_cell(*total_json),
        non_null=non_null,
        null=null,
        sex=sorted(sex.items()),
        age=age,
        modality_combos=combos,
    )
