"""The per-study state machine: allowed moves only, deadlines that end every wait, durable across restarts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flip_core.imaging import StudyFailure, StudyState
from flip_imaging.studies import TRANSITIONS, InvalidStudyTransition, StudyLedger


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[StudyLedger]:
    book = StudyLedger(tmp_path / "studies.sqlite3")
    yield book
    book.close()


PROJECT = uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_duplicates_collapse_and_re_enqueueing_changes_nothing(ledger: StudyLedger) -> None:
    assert ledger.enqueue(PROJECT, ["A1", "A2", "A1", "A3"]) == 3
    ledger.advance(PROJECT, "A2", StudyState.RETRIEVING)
    assert ledger.enqueue(PROJECT, ["A2", "A4"]) == 1  # A2 keeps its state
    assert ledger.get(PROJECT, "A2").state is StudyState.RETRIEVING
    assert ledger.counts(PROJECT)[StudyState.QUEUED] == 3


def test_the_happy_paths(ledger: StudyLedger) -> None:
    ledger.enqueue(PROJECT, ["DICOM", "NIFTI"])
    for accession in ("DICOM", "NIFTI"):
        ledger.advance(PROJECT, accession, StudyState.RETRIEVING)
    ledger.advance(PROJECT, "DICOM", StudyState.READY)  # no conversion asked for
    ledger.advance(PROJECT, "NIFTI", StudyState.CONVERTING)
    ready = ledger.advance(PROJECT, "NIFTI", StudyState.READY)
    assert ready.deadline is None
    assert ledger.counts(PROJECT)[StudyState.READY] == 2


def test_every_move_outside_the_table_is_refused(ledger: StudyLedger) -> None:
    reasons = {StudyState.FAILED: StudyFailure.INTERNAL_ERROR}
    paths = {
        StudyState.QUEUED: [],
        StudyState.RETRIEVING: [StudyState.RETRIEVING],
        StudyState.CONVERTING: [StudyState.RETRIEVING, StudyState.CONVERTING],
        StudyState.READY: [StudyState.RETRIEVING, StudyState.READY],
        StudyState.FAILED: [StudyState.FAILED],
    }
    for start, path in paths.items():
        for target in StudyState:
            accession = f"{start.value}-{target.value}"
            ledger.enqueue(PROJECT, [accession])
            for step in path:
                ledger.advance(PROJECT, accession, step, reason=reasons.get(step))
            assert ledger.get(PROJECT, accession).state is start
            if target in TRANSITIONS[start]:
                ledger.advance(PROJECT, accession, target, reason=reasons.get(target))
            else:
                with pytest.raises(InvalidStudyTransition):
                    ledger.advance(PROJECT, accession, target, reason=reasons.get(target))
                assert ledger.get(PROJECT, accession).state is start
    with pytest.raises(InvalidStudyTransition, match="no study"):
        ledger.advance(PROJECT, "nobody", StudyState.RETRIEVING)
    with pytest.raises(ValueError, match="reason"):
        ledger.advance(PROJECT, "QUEUED-QUEUED", StudyState.FAILED)


def test_no_state_outlives_its_deadline(tmp_path: Path) -> None:
    ledger = StudyLedger(
        tmp_path / "s.sqlite3",
        deadlines={StudyState.QUEUED: 100, StudyState.RETRIEVING: 10, StudyState.CONVERTING: 5},
    )
    ledger.enqueue(PROJECT, ["Q", "R", "C", "OK"], now=0)
    ledger.advance(PROJECT, "R", StudyState.RETRIEVING, now=0)
    ledger.advance(PROJECT, "C", StudyState.RETRIEVING, now=0)
    ledger.advance(PROJECT, "C", StudyState.CONVERTING, now=1)
    ledger.advance(PROJECT, "OK", StudyState.RETRIEVING, now=0)
    ledger.advance(PROJECT, "OK", StudyState.READY, now=1)
    assert ledger.expire(now=5) == 0
    assert ledger.expire(now=7) == 1  # CONVERTING since 1, 5 s allowed
    assert ledger.expire(now=11) == 1  # RETRIEVING since 0, 10 s allowed
    assert ledger.expire(now=101) == 1  # QUEUED since 0
    assert ledger.failures(PROJECT) == {StudyFailure.TIMED_OUT: 3}
    assert ledger.get(PROJECT, "OK").state is StudyState.READY
    assert ledger.expire(now=10_000) == 0  # terminal states have no deadline
    ledger.close()


def test_reimport_retries_failed_studies_only(ledger: StudyLedger) -> None:
    ledger.enqueue(PROJECT, ["BAD", "GOOD"])
    ledger.advance(PROJECT, "BAD", StudyState.FAILED, reason=StudyFailure.NOT_FOUND)
    ledger.advance(PROJECT, "GOOD", StudyState.RETRIEVING)
    ledger.advance(PROJECT, "GOOD", StudyState.READY)
    assert ledger.reimport(PROJECT) == 1
    bad = ledger.get(PROJECT, "BAD")
    assert bad.state is StudyState.QUEUED
    assert bad.reason is None
    assert ledger.get(PROJECT, "GOOD").state is StudyState.READY


def test_claims_from_many_threads_never_take_a_study_twice(ledger: StudyLedger) -> None:
    ledger.enqueue(PROJECT, [f"S{i:03d}" for i in range(200)])
    taken: list[str] = []
    guard = threading.Lock()

    def worker() -> None:
        while batch := ledger.claim(PROJECT, 3):
            with guard:
                taken.extend(s.accession for s in batch)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [f"S{i:03d}" for i in range(200)]
    assert ledger.counts(PROJECT)[StudyState.RETRIEVING] == 200
    assert all(ledger.get(PROJECT, a).attempts == 1 for a in taken[:5])


def test_the_ledger_survives_a_restart_and_forgets_a_deleted_project(tmp_path: Path) -> None:
    path = tmp_path / "studies.sqlite3"
    first = StudyLedger(path)
    first.enqueue(PROJECT, ["A", "B"])
    first.advance(PROJECT, "A", StudyState.RETRIEVING)
    first.close()
    again = StudyLedger(path)
    assert again.get(PROJECT, "A").state is StudyState.RETRIEVING
    assert again.forget(PROJECT) == 2
    assert again.counts(PROJECT) == dict.fromkeys(StudyState, 0)
    again.close()
