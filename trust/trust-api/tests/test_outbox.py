"""The durable outbox: survives reopening, settles only the token it was given, suppresses duplicates."""

from __future__ import annotations

import sqlite3
import stat
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from flip_core.tasks import TaskError, TaskResult
from flip_trust_api.outbox import OUTBOX_FILE, REUSE_WINDOW_S, Claim, Outbox

TOKEN_1 = "token-one-" + "a" * 22
TOKEN_2 = "token-two-" + "b" * 22


def _result(token: str = TOKEN_1, echo: str = "hello") -> TaskResult:
    return TaskResult(lease_token=token, outcome="completed", result={"echo": echo})


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / OUTBOX_FILE)
    yield box
    await box.close()


async def test_results_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / OUTBOX_FILE
    first, second = uuid.uuid4(), uuid.uuid4()
    failed = TaskResult(lease_token=TOKEN_2, outcome="failed", error=TaskError(code="payload_rejected", detail="x"))
    box = await Outbox.open(path)
    await box.put(first, _result())
    await box.put(second, failed)
    await box.close()

    reopened = await Outbox.open(path)
    try:
        pending = await reopened.pending()
        assert [e.task_id for e in pending] == [first, second]
        assert pending[0].result == _result()
        assert pending[1].result == failed
        assert await reopened.size() == 2
    finally:
        await reopened.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_ack_removes_only_the_token_it_names(outbox: Outbox) -> None:
    task_id = uuid.uuid4()
    await outbox.put(task_id, _result(TOKEN_1))
    assert await outbox.ack(task_id, TOKEN_2, "COMPLETED") is False
    assert await outbox.size() == 1
    assert await outbox.ack(task_id, TOKEN_1, "COMPLETED") is True
    assert await outbox.pending() == []
    assert await outbox.settled_status(task_id) == "COMPLETED"
    assert await outbox.ack(task_id, TOKEN_1, "COMPLETED") is False


async def test_put_replaces_and_resets_attempts(outbox: Outbox) -> None:
    task_id = uuid.uuid4()
    await outbox.put(task_id, _result(TOKEN_1, "old"))
    await outbox.note_failure(task_id, "ConnectError")
    (entry,) = await outbox.pending()
    assert (entry.attempts, entry.last_error) == (1, "ConnectError")
    await outbox.put(task_id, _result(TOKEN_2, "new"))
    (entry,) = await outbox.pending()
    assert entry.result == _result(TOKEN_2, "new")
    assert (entry.attempts, entry.last_error) == (0, None)


async def test_a_fresh_task_is_executed(outbox: Outbox) -> None:
    assert await outbox.claim(uuid.uuid4(), TOKEN_1) is Claim.EXECUTE


async def test_redelivery_of_a_pending_result_is_replayed_under_the_new_token(tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE
    task_id = uuid.uuid4()
    box = await Outbox.open(path)
    await box.put(task_id, _result(TOKEN_1))
    assert await box.claim(task_id, TOKEN_2) is Claim.REPLAY
    await box.close()
    box = await Outbox.open(path)
    try:
        (entry,) = await box.pending()
        assert entry.result == _result(TOKEN_2)  # same work, now addressed to the current lease
        # The old token no longer settles it; the new one does.
        assert await box.drop(task_id, TOKEN_1, "stale_lease") is False
        assert await box.ack(task_id, TOKEN_2, "COMPLETED") is True
    finally:
        await box.close()


async def test_a_lease_already_answered_is_a_duplicate(outbox: Outbox) -> None:
    task_id = uuid.uuid4()
    await outbox.put(task_id, _result(TOKEN_1))
    await outbox.ack(task_id, TOKEN_1, "COMPLETED")
    assert await outbox.claim(task_id, TOKEN_1) is Claim.DUPLICATE
    # A new attempt (e.g. after a retryable failure was acknowledged) runs again.
    assert await outbox.claim(task_id, TOKEN_2) is Claim.EXECUTE


async def test_a_stale_result_kept_for_reuse_answers_the_task_when_it_comes_back(tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE
    task_id = uuid.uuid4()
    box = await Outbox.open(path)
    await box.put(task_id, _result(TOKEN_1, "computed once"))
    assert await box.drop(task_id, TOKEN_1, "stale_lease", reusable=True)
    assert await box.size() == 0
    await box.close()
    box = await Outbox.open(path)
    try:
        assert await box.claim(task_id, TOKEN_2) is Claim.REPLAY
        (entry,) = await box.pending()
        assert entry.result == _result(TOKEN_2, "computed once")
        assert await box.settled_status(task_id) is None
    finally:
        await box.close()


async def test_a_stale_result_not_kept_means_running_again(outbox: Outbox) -> None:
    task_id = uuid.uuid4()
    await outbox.put(task_id, _result(TOKEN_1))
    await outbox.drop(task_id, TOKEN_1, "stale_lease")
    assert await outbox.claim(task_id, TOKEN_2) is Claim.EXECUTE


async def test_kept_results_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = await Outbox.open(tmp_path / OUTBOX_FILE)
    try:
        old, new = uuid.uuid4(), uuid.uuid4()
        await box.put(old, _result())
        await box.drop(old, TOKEN_1, "stale_lease", reusable=True)
        later = time.time() + REUSE_WINDOW_S + 60
        monkeypatch.setattr(time, "time", lambda: later)
        await box.put(new, _result())
        await box.ack(new, TOKEN_1, "COMPLETED")  # any settle prunes expired bodies
        assert await box.claim(old, TOKEN_2) is Claim.EXECUTE
    finally:
        await box.close()


async def test_drop_settles_with_its_reason(outbox: Outbox) -> None:
    task_id = uuid.uuid4()
    await outbox.put(task_id, _result(TOKEN_1))
    assert await outbox.drop(task_id, TOKEN_1, "stale_lease") is True
    assert await outbox.size() == 0
    assert await outbox.settled_status(task_id) == "dropped:stale_lease"


async def test_only_recent_settled_ids_are_remembered(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / OUTBOX_FILE, remember=3)
    try:
        ids = [uuid.uuid4() for _ in range(5)]
        for task_id in ids:
            await box.put(task_id, _result())
            await box.ack(task_id, TOKEN_1, "COMPLETED")
        assert [await box.settled_status(t) for t in ids] == [None, None, "COMPLETED", "COMPLETED", "COMPLETED"]
    finally:
        await box.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(sqlite3.DatabaseError, match="newer agent"):
        await Outbox.open(path)
