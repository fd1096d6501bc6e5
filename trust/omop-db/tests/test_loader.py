"""Bulk loading into real PostgreSQL: exact round trip, determinism, plausibility, replace semantics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import flip_omop.loader
from flip_omop import (
    PROFILES,
    TABLES,
    LoadSummary,
    SchemaNotEmptyError,
    generate_blocks,
    image_occurrences,
    load_synthetic,
)
from flip_omop.columns import GeneratedTable, Table
from flip_omop.concepts import vocabulary

Db = psycopg.Connection[tuple[object, ...]]
LOADED_PERSONS = 20_000  # what the ``loaded`` fixture in conftest.py generates per profile

FACT_DATES = {
    "visit_occurrence": "visit_start_date",
    "condition_occurrence": "condition_start_date",
    "drug_exposure": "drug_exposure_start_date",
    "procedure_occurrence": "procedure_date",
    "measurement": "measurement_date",
    "observation": "observation_date",
    "death": "death_date",
    "image_occurrence": "image_occurrence_date",
}


def _checksums(conninfo: str) -> dict[str, str]:
    """md5 of every table's rows in primary-key order (the first column of every table)."""
    result: dict[str, str] = {}
    with psycopg.connect(conninfo) as conn:
        for table in TABLES:
            first = conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = 1", (f"omop.{table}",)
            ).fetchone()
            assert first is not None
            row = conn.execute(
                sql.SQL("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.{}), '')) FROM {} t").format(
                    sql.Identifier(str(first[0])), sql.Identifier("omop", table)
                )
            ).fetchone()
            assert row is not None
            result[table] = str(row[0])
    return result


def _scalar(conn: Db, query: str | sql.Composed, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_loaded_rows_are_exactly_the_generated_rows(omop_db: str) -> None:
    summary = load_synthetic(omop_db, 700, 21, PROFILES["east"])

    generated: dict[str, list[tuple[Any, ...]]] = {}
    columns: dict[str, tuple[str, ...]] = {}
    for block in generate_blocks(PROFILES["east"], 700, 21):
        for table_name, table in block.items():
            columns[table_name] = table.column_names
            rows = zip(*(c.python_values() for c in table.columns), strict=True)
            generated.setdefault(table_name, []).extend(rows)
    with psycopg.connect(omop_db) as conn:
        for name, expected in generated.items():
            query = sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
                sql.SQL(", ").join(map(sql.Identifier, columns[name])), sql.Identifier("omop", name)
            )
            assert conn.execute(query).fetchall() == expected, name
            assert summary.rows[name] == len(expected)
        concepts = conn.execute("SELECT concept_id, concept_name, concept_code FROM omop.concept ORDER BY 1").fetchall()
    assert concepts == [(c.concept_id, c.concept_name, c.concept_code) for c in vocabulary()]


def test_same_seed_loads_identical_tables_and_other_seeds_or_profiles_do_not(
    new_database: Callable[[], str],
) -> None:
    first, second, other_seed, other_profile = (new_database() for _ in range(4))
    load_synthetic(first, 2_000, 4, "south")
    load_synthetic(second, 2_000, 4, "south")
    load_synthetic(other_seed, 2_000, 5, "south")
    load_synthetic(other_profile, 2_000, 4, "north")

    reference = _checksums(first)
    assert _checksums(second) == reference
    changed_by_seed = {t for t, h in _checksums(other_seed).items() if h != reference[t]}
    changed_by_profile = {t for t, h in _checksums(other_profile).items() if h != reference[t]}
    assert changed_by_seed == set(TABLES) - {"concept"}
    assert changed_by_profile == set(TABLES) - {"concept"}


def test_load_of_twenty_thousand_persons_is_quick(loaded: dict[str, tuple[str, LoadSummary]]) -> None:
    for _, summary in loaded.values():
        assert summary.persons == LOADED_PERSONS
        assert summary.seconds < 15, summary
        assert summary.rows["person"] == LOADED_PERSONS


def test_every_fact_belongs_to_an_existing_person_and_visit(north: Db) -> None:
    assert _scalar(north, "SELECT count(*) FROM omop.person") == LOADED_PERSONS
    assert _scalar(north, "SELECT count(*) FROM omop.observation_period") == LOADED_PERSONS
    for table in [t for t in TABLES if t not in ("person", "concept")]:
        orphans = sql.SQL(
            "SELECT count(*) FROM {} f WHERE NOT EXISTS (SELECT 1 FROM omop.person p WHERE p.person_id = f.person_id)"
        ).format(sql.Identifier("omop", table))
        assert _scalar(north, orphans) == 0, table
    for table in ("condition_occurrence", "drug_exposure", "procedure_occurrence", "measurement", "observation",
                  "image_occurrence"):  # fmt: skip
        wrong_visit = sql.SQL(
            "SELECT count(*) FROM {} f LEFT JOIN omop.visit_occurrence v USING (visit_occurrence_id) "
            "WHERE v.person_id IS DISTINCT FROM f.person_id"
        ).format(sql.Identifier("omop", table))
        assert _scalar(north, wrong_visit) == 0, table
    assert _scalar(
        north,
        "SELECT count(*) FROM omop.image_occurrence i JOIN omop.procedure_occurrence p "
        "USING (procedure_occurrence_id) WHERE p.procedure_concept_id = i.modality_concept_id "
        "AND p.person_id = i.person_id AND p.procedure_date = i.image_occurrence_date",
    ) == _scalar(north, "SELECT count(*) FROM omop.image_occurrence")
    assert _scalar(
        north,
        "SELECT count(*) FROM omop.image_feature f JOIN omop.measurement m ON m.measurement_id = "
        "f.image_feature_event_id AND f.image_feature_event_field_concept_id = 1147330 "
        "AND m.measurement_concept_id = f.image_feature_concept_id AND m.person_id = f.person_id",
    ) == _scalar(north, "SELECT count(*) FROM omop.image_feature")


def test_every_date_lies_inside_the_persons_observation_period(north: Db) -> None:
    for table, column in FACT_DATES.items():
        outside = sql.SQL(
            "SELECT count(*) FROM {} f JOIN omop.observation_period o USING (person_id) "
            "WHERE f.{} NOT BETWEEN o.observation_period_start_date AND o.observation_period_end_date"
        ).format(sql.Identifier("omop", table), sql.Identifier(column))
        assert _scalar(north, outside) == 0, table
    assert _scalar(north, "SELECT count(*) FROM omop.visit_occurrence WHERE visit_end_date < visit_start_date") == 0
    assert (
        _scalar(
            north,
            "SELECT count(*) FROM omop.drug_exposure WHERE drug_exposure_end_date < drug_exposure_start_date",
        )
        == 0
    )
    assert (
        _scalar(
            north,
            "SELECT count(*) FROM omop.death d JOIN omop.observation_period o USING (person_id) "
            "WHERE d.death_date <> o.observation_period_end_date",
        )
        == 0
    )


def test_every_concept_id_used_is_in_the_concept_table(north: Db) -> None:
    columns = north.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'omop' AND column_name LIKE '%%concept_id' AND table_name <> 'concept'"
    ).fetchall()
    for table, column in columns:
        missing = sql.SQL(
            "SELECT count(*) FROM {} f WHERE f.{} IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM omop.concept c WHERE c.concept_id = f.{})"
        ).format(sql.Identifier("omop", str(table)), sql.Identifier(str(column)), sql.Identifier(str(column)))
        assert _scalar(north, missing) == 0, f"{table}.{column}"


def test_imaging_rows_are_plausible_and_match_the_pure_generator(
    north: Db, loaded: dict[str, tuple[str, LoadSummary]]
) -> None:
    rows = north.execute(
        "SELECT accession_id, person_id, modality_source_value, c.concept_name, image_occurrence_date, "
        "image_study_uid, image_series_uid, procedure_occurrence_id, "
        "EXISTS (SELECT 1 FROM omop.image_feature f WHERE f.image_occurrence_id = i.image_occurrence_id) "
        "FROM omop.image_occurrence i JOIN omop.concept c ON c.concept_id = i.modality_concept_id "
        "ORDER BY image_occurrence_id"
    ).fetchall()
    studies = list(image_occurrences(PROFILES["north"], LOADED_PERSONS, 11))

    assert len(rows) == len(studies) > 0.2 * LOADED_PERSONS
    assert len({r[0] for r in rows}) == len(rows)
    assert {(r[2], r[3]) for r in rows} == {("CT", "Computed tomography"), ("MR", "Magnetic resonance imaging")}
    assert [
        (s.accession_id, s.person_id, s.modality, s.study_date, s.study_instance_uid, s.series_instance_uid,
         s.procedure_occurrence_id, s.lesion)
        for s in studies
    ] == [(r[0], r[1], r[2], r[4], r[5], r[6], r[7], r[8]) for r in rows]  # fmt: skip
    assert loaded["north"][1].rows["image_occurrence"] == len(studies)


def _prevalence(conninfo: str, concept_id: int) -> float:
    with psycopg.connect(conninfo) as conn:
        return float(
            _scalar(
                conn,
                "SELECT count(DISTINCT person_id)::float / (SELECT count(*) FROM omop.person) "
                "FROM omop.condition_occurrence WHERE condition_concept_id = %s",
                (concept_id,),
            )
        )


def test_prevalence_demographics_and_coding_differ_between_profiles(
    loaded: dict[str, tuple[str, LoadSummary]],
) -> None:
    north, south, east = (loaded[p][0] for p in ("north", "south", "east"))
    t2dm = {name: _prevalence(conninfo, 201826) for name, (conninfo, _) in loaded.items()}
    assert t2dm["east"] > 1.3 * t2dm["north"] > 1.3 * 1.5 * t2dm["south"]
    assert _prevalence(north, 255573) > 2 * _prevalence(south, 255573)  # COPD
    assert _prevalence(south, 317009) > 1.3 * _prevalence(north, 317009)  # asthma

    def one(conninfo: str, query: str) -> Any:
        with psycopg.connect(conninfo) as conn:
            return _scalar(conn, query)

    mean_age = "SELECT avg(2024 - year_of_birth) FROM omop.person"
    assert one(north, mean_age) > one(east, mean_age) + 3 > one(south, mean_age) + 4
    hba1c_units = "SELECT string_agg(DISTINCT unit_source_value, ',') FROM omop.measurement WHERE measurement_concept_id = 3004410"  # noqa: E501
    assert (one(north, hba1c_units), one(south, hba1c_units)) == ("mmol/mol", "%")
    t2dm_code = "SELECT min(condition_source_value) FROM omop.condition_occurrence WHERE condition_concept_id = 201826"
    assert (one(north, t2dm_code), one(south, t2dm_code), one(east, t2dm_code)) == ("E11.9", "44054006", "E119")
    ct_share = "SELECT avg((modality_source_value = 'CT')::int) FROM omop.image_occurrence"
    assert one(north, ct_share) > 0.7 > one(east, ct_share) > 0.55 > one(south, ct_share)


@pytest.fixture
def small(omop_db: str) -> str:
    load_synthetic(omop_db, 300, 1, "north")
    return omop_db


def _index_definitions(conninfo: str) -> list[str]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'omop' ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


def test_loading_into_a_filled_schema_needs_replace(small: str) -> None:
    before = _checksums(small)
    indexes = _index_definitions(small)

    with pytest.raises(SchemaNotEmptyError, match="replace=True"):
        load_synthetic(small, 400, 2, "south")
    assert _checksums(small) == before

    summary = load_synthetic(small, 400, 2, "south", replace=True)
    assert summary.rows["person"] == 400
    with psycopg.connect(small) as conn:
        assert _scalar(conn, "SELECT count(*) FROM omop.person") == 400
        assert _scalar(conn, "SELECT count(*) FROM omop.concept") == len(vocabulary())
        assert _scalar(conn, "SELECT min(accession_id) FROM omop.image_occurrence").startswith("STH")
    assert _index_definitions(small) == indexes


def test_a_failed_load_leaves_the_previous_data_and_indexes(small: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _checksums(small)
    indexes = _index_definitions(small)

    def failing(*args: Any) -> Iterator[dict[Table, GeneratedTable]]:
        yield from generate_blocks(*args)
        raise RuntimeError("generator broke after the rows were streamed")

    monkeypatch.setattr(flip_omop.loader, "generate_blocks", failing)
    with pytest.raises(RuntimeError, match="generator broke"):
        load_synthetic(small, 500, 3, "east", replace=True)

    assert _checksums(small) == before
    assert _index_definitions(small) == indexes


def test_invalid_arguments_are_refused(omop_db: str) -> None:
    with pytest.raises(ValueError, match="persons"):
        load_synthetic(omop_db, 0, 1, "north")
    with pytest.raises(ValueError, match="seed"):
        load_synthetic(omop_db, 10, -1, "north")
    with pytest.raises(ValueError, match="unknown trust profile"):
        load_synthetic(omop_db, 10, 1, "west")
