"""Cohort statistics, snapshots and row-level access on a real PostgreSQL with a known dataset."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import psycopg
import pytest
from data_access_testing import make_service, new_id

import flip_omop
from flip_core.cohort import OTHER_BUCKET, CohortErrorCode, CohortQueryPayload, GatedCount, PersistCohortPayload
from flip_data_access.gate import BELOW_THRESHOLD_MESSAGE
from flip_data_access.omop import CohortError
from flip_data_access.service import CohortService
from flip_data_access.snapshot import META, PARQUET, SnapshotStore

DIABETES = """
SELECT p.person_id, p.year_of_birth, c.condition_start_date
FROM person p JOIN condition_occurrence c ON c.person_id = p.person_id
WHERE c.condition_concept_id = 201826
"""


def _ask(sql: str, min_k: int = 10) -> CohortQueryPayload:
    return CohortQueryPayload(query_id=new_id(), project_id=new_id(), version=1, sql=sql, min_k=min_k)


def _freeze(sql: str, project: uuid.UUID | None = None, min_k: int = 10) -> PersistCohortPayload:
    return PersistCohortPayload(project_id=project or new_id(), query_id=new_id(), version=1, sql=sql, min_k=min_k)


def _released(value: int) -> GatedCount:
    return GatedCount(value=value, suppressed=False)


SUPPRESSED = GatedCount(value=None, suppressed=True)


async def test_statistics_count_distinct_persons_not_rows(exact: CohortService) -> None:
    stats = await exact.statistics(_ask(DIABETES))
    assert stats.record_count == _released(60)  # 90 rows, 60 persons
    assert stats.k == 10
    by_column = {c.column: c for c in stats.columns}
    assert set(by_column) == {"person_id", "year_of_birth", "condition_start_date"}
    assert by_column["year_of_birth"].non_null == _released(60)
    assert by_column["year_of_birth"].null == SUPPRESSED  # nobody: a true zero looks like 1..9
    distributions = {d.name: {b.label: b.count for b in d.buckets} for d in stats.distributions}
    assert distributions["sex"] == {"Female": _released(40), "Male": _released(20)}
    assert sum(c.value or 0 for c in distributions["age_band"].values()) <= 60
    # Of the 60 (multiples of 5): CT = multiples of 20 (15), MR = multiples of 10 (30); no PT.
    assert distributions["modality"] == {"CT": _released(15), "MR": _released(30)}


async def test_small_cohorts_and_buckets_are_suppressed(exact: CohortService) -> None:
    rare = "SELECT person_id FROM condition_occurrence WHERE condition_concept_id = 4329847"
    stats = await exact.statistics(_ask(rare))
    assert stats.record_count == SUPPRESSED
    assert all(b.count == SUPPRESSED for d in stats.distributions for b in d.buckets)
    # Everyone with imaging: PT (2 persons) is merged into Other, and Other (2) stays suppressed.
    imaged = await exact.statistics(_ask("SELECT person_id FROM image_occurrence"))
    modality = next(d for d in imaged.distributions if d.name == "modality")
    assert [(b.label, b.count) for b in modality.buckets] == [
        ("CT", _released(75)),
        ("MR", _released(30)),
        (OTHER_BUCKET, SUPPRESSED),
    ]


async def test_the_hub_can_raise_the_threshold_but_not_lower_it(exact: CohortService) -> None:
    assert (await exact.statistics(_ask(DIABETES, min_k=61))).record_count == SUPPRESSED
    lowered = await exact.statistics(_ask("SELECT person_id FROM person WHERE person_id <= 5", min_k=1))
    assert lowered.k == 10
    assert lowered.record_count == SUPPRESSED


async def test_unqualified_names_read_omop_never_other_schemas(exact: CohortService) -> None:
    stats = await exact.statistics(_ask("SELECT person_id FROM person"))
    assert stats.record_count == _released(300)  # public.person (1 row) is a decoy


@pytest.mark.parametrize(
    ("sql", "code", "fragment"),
    [
        ("DELETE FROM person", CohortErrorCode.INVALID_QUERY, ""),
        ("SELECT * FROM pg_catalog.pg_authid", CohortErrorCode.INVALID_QUERY, ""),
        ("SELECT year_of_birth FROM person", CohortErrorCode.NO_PERSON_COLUMN, "person_id"),
        ("SELECT person_id FROM no_such_table", CohortErrorCode.UNKNOWN_TABLE, "no_such_table"),
        ("SELECT person_id, shoe_size FROM person", CohortErrorCode.UNKNOWN_COLUMN, "shoe_size"),
        ("SELECT person_id, person_id FROM person", CohortErrorCode.INVALID_QUERY, "person_id"),
        ("SELECT person_id, 1 / (person_id - 5) FROM person", CohortErrorCode.QUERY_FAILED, ""),
    ],
)
async def test_errors_come_back_as_safe_categories(
    exact: CohortService, sql: str, code: CohortErrorCode, fragment: str
) -> None:
    with pytest.raises(CohortError) as info:
        await exact.statistics(_ask(sql))
    assert info.value.code is code
    assert fragment in info.value.detail
    assert "ERROR" not in info.value.detail  # no raw database text
    assert "division" not in info.value.detail


async def test_a_query_over_its_time_is_cancelled(omop_dsn: str, tmp_path: Path) -> None:
    service = make_service(omop_dsn, tmp_path, timeout_s=0.2)
    await service.db.open()
    try:
        heavy = (
            "SELECT a.person_id FROM person a, person b, person c WHERE a.year_of_birth + b.year_of_birth > c.person_id"
        )
        with pytest.raises(CohortError) as info:
            await service.statistics(_ask(heavy))
        assert info.value.code is CohortErrorCode.QUERY_TIMEOUT
    finally:
        await service.db.close()


async def test_an_unreachable_database_is_data_unavailable(tmp_path: Path) -> None:
    service = make_service(f"host={tmp_path} port=1 user=nobody dbname=omop connect_timeout=1", tmp_path)
    await service.db.open()
    try:
        with pytest.raises(CohortError) as info:
            await service.statistics(_ask(DIABETES))
        assert info.value.code is CohortErrorCode.DATA_UNAVAILABLE
        assert info.value.retryable
    finally:
        await service.db.close()


async def test_same_persons_same_released_count_however_asked(noisy: CohortService) -> None:
    a = await noisy.statistics(_ask("SELECT person_id FROM person WHERE person_id % 5 = 0"))
    b = await noisy.statistics(_ask(DIABETES))  # the same 60 persons, found another way
    assert a.record_count == b.record_count
    assert a.record_count.value is not None
    assert abs(a.record_count.value - 60) <= 2


async def test_differencing_with_real_queries_does_not_give_away_one_person(noisy: CohortService) -> None:
    hits = 0
    differences = set()
    for n in range(40, 100):
        with_x = await noisy.statistics(_ask(f"SELECT person_id FROM person WHERE person_id <= {n}"))
        without = await noisy.statistics(_ask(f"SELECT person_id FROM person WHERE person_id <= {n - 1}"))
        assert with_x.record_count.value is not None
        assert without.record_count.value is not None
        difference = with_x.record_count.value - without.record_count.value
        differences.add(difference)
        hits += difference == 1
    assert hits / 60 < 0.4
    assert len(differences) >= 5


async def test_freezing_is_atomic_idempotent_and_checked(exact: CohortService) -> None:
    project = new_id()
    info = await exact.freeze(_freeze(DIABETES, project))
    assert info.persons == _released(60)
    assert info.rows == _released(90)
    assert info.columns == ["person_id", "year_of_birth", "condition_start_date"]
    folder = exact.snapshots.folder(project)
    assert sorted(p.name for p in folder.iterdir()) == [PARQUET, META]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp")]  # nothing half-written left
    again = await exact.freeze(_freeze("SELECT person_id FROM person", project))  # frozen means frozen
    assert again == info
    frame = exact.dataframe(project, None)
    assert len(frame["person_id"]) == 90
    assert set(frame["person_id"]) == {i for i in range(5, 301, 5)}
    # A damaged snapshot is refused, not served.
    (folder / PARQUET).write_bytes(b"not parquet any more")
    with pytest.raises(CohortError) as damaged:
        exact.dataframe(project, None)
    assert damaged.value.code is CohortErrorCode.INTERNAL_ERROR


async def test_concurrent_freezes_of_one_project_leave_one_snapshot(exact: CohortService) -> None:
    project = new_id()
    infos = await asyncio.gather(*(exact.freeze(_freeze(DIABETES, project)) for _ in range(4)))
    assert len({i.sha256 for i in infos}) == 1
    assert [p.name for p in exact.snapshots.root.iterdir()] == [str(project)]


async def test_a_cohort_below_k_is_not_frozen_and_row_requests_are_refused_alike(exact: CohortService) -> None:
    project = new_id()
    messages = set()
    for sql in ("SELECT person_id FROM person WHERE person_id <= 9", "SELECT person_id FROM person WHERE false"):
        with pytest.raises(CohortError) as info:
            await exact.freeze(_freeze(sql, project))
        assert info.value.code is CohortErrorCode.BELOW_THRESHOLD
        messages.add(info.value.detail)
    assert messages == {BELOW_THRESHOLD_MESSAGE}  # 9 persons and 0 persons look the same
    assert exact.snapshots.meta(project) is None  # nothing kept
    with pytest.raises(CohortError) as info:
        exact.dataframe(project, None)
    assert info.value.code is CohortErrorCode.NOT_APPROVED


async def test_accession_ids_come_from_the_snapshot_only(exact: CohortService) -> None:
    project = new_id()
    sql = "SELECT person_id, accession_id FROM image_occurrence WHERE modality_source_value = 'CT'"
    await exact.freeze(_freeze(sql, project))
    ids = exact.accession_ids(project)
    assert len(ids) == 75
    assert ids[0].startswith("ACC")
    meta = json.loads((exact.snapshots.folder(project) / META).read_text())
    assert meta["rows"] == 75
    no_column = new_id()
    await exact.freeze(_freeze(DIABETES, no_column))
    with pytest.raises(CohortError) as info:
        exact.accession_ids(no_column)
    assert info.value.code is CohortErrorCode.UNKNOWN_COLUMN


async def test_a_freeze_that_fails_midway_leaves_nothing_behind(omop_dsn: str, tmp_path: Path) -> None:
    """A snapshot over the size limit fails after rows were written: no snapshot, no temporary folder."""
    service = make_service(omop_dsn, tmp_path)
    service.snapshots.max_bytes = 1024  # smaller than the first written batch
    await service.db.open()
    try:
        project = new_id()
        with pytest.raises(CohortError) as info:
            await service.freeze(_freeze("SELECT p.person_id, p.year_of_birth FROM person p, person q", project))
        assert info.value.code is CohortErrorCode.SNAPSHOT_TOO_LARGE
        assert list(service.snapshots.root.iterdir()) == []  # neither a snapshot nor a .tmp folder
        with pytest.raises(CohortError) as refused:
            service.dataframe(project, None)
        assert refused.value.code is CohortErrorCode.NOT_APPROVED
    finally:
        await service.db.close()


async def test_what_a_killed_freeze_left_is_never_served_and_is_cleaned_at_start(
    exact: CohortService, tmp_path: Path
) -> None:
    project = new_id()
    crashed = exact.snapshots.root / f".tmp-{project}-deadbeef"
    crashed.mkdir()
    (crashed / PARQUET).write_bytes(b"PAR1 half a file")
    assert exact.snapshots.meta(project) is None
    with pytest.raises(CohortError):
        exact.dataframe(project, None)
    SnapshotStore(exact.snapshots.root, max_bytes=10**6)  # a restarted service
    assert not crashed.exists()
    info = await exact.freeze(_freeze(DIABETES, project))  # and freezing works afterwards
    assert info.persons == _released(60)


async def test_the_per_person_summary_gives_the_same_statistics_as_the_cdm_joins(
    exact: CohortService, owner_dsn: str
) -> None:
    """With ``omop.flip_person_summary`` populated the statistics take the narrow path, same numbers."""
    imaged = "SELECT person_id, accession_id FROM image_occurrence"
    live = [await exact.statistics(_ask(sql)) for sql in (DIABETES, imaged)]
    ddl = flip_omop.ddl()
    summary_ddl = ddl[ddl.index("CREATE MATERIALIZED VIEW") :]  # the view and its index, as trusts get them
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(summary_ddl)
        conn.execute("GRANT SELECT ON omop.flip_person_summary TO omop_reader_test")
    try:
        flip_omop.refresh_person_summary(owner_dsn)
        summarised = [await exact.statistics(_ask(sql)) for sql in (DIABETES, imaged)]
    finally:
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute("DROP MATERIALIZED VIEW omop.flip_person_summary")
    for a, b in zip(live, summarised, strict=True):
        assert a.record_count == b.record_count
        assert a.columns == b.columns
        assert a.distributions == b.distributions


async def test_study_counts_are_gated_counts_of_distinct_persons(exact: CohortService) -> None:
    """The imaging-api reports study states through the same gate: persons, not studies, and k applies."""
    project = new_id()
    sql = "SELECT person_id, accession_id FROM image_occurrence"
    await exact.freeze(_freeze(sql, project))
    ct = [f"ACC{i}-CT" for i in range(4, 301, 4)]  # 75 persons
    mr = [f"ACC{i}-MR" for i in range(10, 301, 10)]  # 30 persons, 15 of them also in ct
    k, counts = exact.study_counts(
        project,
        {"READY": ct + mr, "FAILED": ["ACC7-PT", "ACC11-PT"], "QUEUED": ["NOT-IN-COHORT"], "MR": mr},
        None,
    )
    assert k == 10
    assert counts["READY"] == _released(75 + 15)  # two studies of one person count once
    assert counts["MR"] == _released(30)
    assert counts["FAILED"] == SUPPRESSED  # 2 persons
    assert counts["QUEUED"] == SUPPRESSED  # nobody: looks the same as 1..9
    _, raised = exact.study_counts(project, {"MR": mr}, 31)
    assert raised["MR"] == SUPPRESSED  # the hub may raise k
    with pytest.raises(CohortError) as info:
        exact.study_counts(new_id(), {"READY": ct}, None)
    assert info.value.code is CohortErrorCode.NOT_APPROVED
    # The hidden record-key column never reaches row-level callers.
    assert "__flip_record_key" not in exact.dataframe(project, None)
