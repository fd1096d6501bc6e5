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


# Demographics and imaging modalities of the cohort's persons, from the per-person summary that
# ``flip trust omop refresh`` maintains: one narrow join.
_PEOPLE_FROM_SUMMARY = """demo AS (
    SELECT p.rk, s.gender_concept_id AS gender, s.modalities AS combo,
           CASE WHEN s.year_of_birth IS NULL THEN NULL
                ELSE LEAST(9, GREATEST(0, (EXTRACT(YEAR FROM current_date)::int - s.year_of_birth) / 10))
           END AS band
    FROM persons p LEFT JOIN omop.flip_person_summary s ON s.person_id = p.person_id
)"""

# The same from the CDM tables themselves, for an OMOP database without the summary (two joins).
_PEOPLE_FROM_CDM = """mods AS (
    SELECT io.person_id, array_agg(DISTINCT io.modality_source_value ORDER BY io.modality_source_value) AS combo
    FROM persons p JOIN omop.image_occurrence io ON io.person_id = p.person_id
    WHERE io.modality_source_value IS NOT NULL
    GROUP BY io.person_id
),
demo AS (
    SELECT p.rk, per.gender_concept_id AS gender, m.combo,
           CASE WHEN per.year_of_birth IS NULL THEN NULL
                ELSE LEAST(9, GREATEST(0, (EXTRACT(YEAR FROM current_date)::int - per.year_of_birth) / 10))
           END AS band
    FROM persons p
    LEFT JOIN omop.person per ON per.person_id = p.person_id
    LEFT JOIN mods m ON m.person_id = p.person_id
)"""

SUMMARY_READY = """
SELECT coalesce((SELECT relispopulated FROM pg_class WHERE oid = to_regclass('omop.flip_person_summary')), false)
"""
"""Whether the per-person summary exists and has been populated (else the CDM joins are used)."""


def statistics_sql(cohort_sql: str, columns: Sequence[str], seed: int, *, summary: bool = False) -> sql.Composed:
    """One statement returning every cell of the cohort as JSON (see the module docstring)."""
    person = sql.Identifier(PERSON_COLUMN)
    flags = []
    for i, name in enumerate(columns):
        col = sql.Identifier(name)
        if name == PERSON_COLUMN:
            continue  # never null among persons: its cells are the total and nobody
        flags.append(sql.SQL("bool_or({} IS NOT NULL) AS {}").format(col, sql.Identifier(f"nn_{i}")))
        flags.append(sql.SQL("bool_or({} IS NULL) AS {}").format(col, sql.Identifier(f"nl_{i}")))
    column_cells: list[sql.Composable] = [sql.SQL("'total', json_build_array(count(*), coalesce(sum(rk), 0))")]
    for i, name in enumerate(columns):
        if name == PERSON_COLUMN:
            continue
        for kind in ("nn", "nl"):
            flag = sql.Identifier(f"{kind}_{i}")
            column_cells.append(
                sql.SQL(
                    "{}, json_build_array(count(*) FILTER (WHERE {}), coalesce(sum(rk) FILTER (WHERE {}), 0))"
                ).format(sql.Literal(f"{kind}:{name}"), flag, flag)
            )
    return sql.SQL(
        """
WITH cohort AS NOT MATERIALIZED ({cohort}),
persons AS MATERIALIZED (
    SELECT {person} AS person_id, {rk} AS rk{flags}
    FROM cohort
    WHERE {person} IS NOT NULL
    GROUP BY {person}
),
{people}
SELECT
    (SELECT json_build_object({column_cells})
     FROM persons) AS cells,
    (SELECT coalesce(json_agg(json_build_array(by_sex, by_band, gender, band, combo, n, k)), '[]') FROM (
        SELECT GROUPING(gender) = 0 AS by_sex, GROUPING(band) = 0 AS by_band, gender, band, combo,
               count(*) AS n, sum(rk) AS k
        FROM demo GROUP BY GROUPING SETS ((gender), (band), (combo))
    ) g) AS groups
"""
    ).format(
        cohort=sql.SQL(cohort_sql),  # the validator's re-emitted SQL, never the caller's text
        person=person,
        rk=record_key(person, seed),
        flags=sql.SQL("").join(sql.SQL(", ") + f for f in flags),
        column_cells=sql.SQL(", ").join(column_cells),
        people=sql.SQL(_PEOPLE_FROM_SUMMARY if summary else _PEOPLE_FROM_CDM),
    )


def _cell(n: Any, key: Any) -> Cell:
    return Cell(int(n), int(key) % KEY_SPACE)


def _age_label(band: int | None) -> str:
    if band is None:
        return UNKNOWN
    return "90+" if band >= 9 else f"{band * 10}-{band * 10 + 9}"


def parse_cells(row: Sequence[Any], columns: Sequence[str]) -> CohortCells:
    """Turn the statistics query's single row into :class:`CohortCells`."""
    cells_json, groups_json = row
    total = _cell(*cells_json["total"])
    non_null = {name: total if name == PERSON_COLUMN else _cell(*cells_json[f"nn:{name}"]) for name in columns}
    null = {name: Cell(0, 0) if name == PERSON_COLUMN else _cell(*cells_json[f"nl:{name}"]) for name in columns}
    sex: dict[str, Cell] = {}
    age: list[tuple[str, Cell]] = []
    combos: list[tuple[frozenset[str], Cell]] = []
    for by_sex, by_band, gender, band, combo, n, key in groups_json:
        cell = _cell(n, key)
        if by_sex:
            label = SEX_LABELS.get(gender, UNKNOWN) if gender is not None else UNKNOWN
            sex[label] = Cell.union([sex[label], cell]) if label in sex else cell
        elif by_band:
            age.append((_age_label(band), cell))
        elif combo is not None:  # persons without imaging form the NULL group: no modality bucket
            combos.append((frozenset(combo), cell))
    return CohortCells(
        total=total,
        non_null=non_null,
        null=null,
        sex=sorted(sex.items()),
        age=sorted(age, key=lambda item: item[0]),
        modality_combos=combos,
    )
