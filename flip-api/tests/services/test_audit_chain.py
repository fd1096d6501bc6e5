"""The audit log: appended in the caller's transaction, hash-chained, append-only, verifiable."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from sqlalchemy import func, select

from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry
from flip_api.db.session import libpq_conninfo, transaction
from flip_api.services import audit
from flip_api.services.audit import Actor, verify_chain


async def _append(hub: HubState, n: int) -> None:
    for i in range(n):
        async with transaction(hub.sessions) as s:
            await audit.record(s, Actor.system("test"), "test.event", "thing", uuid.uuid4(), {"i": i, "name": "é"})


async def test_chain_links_and_verifies(hub: HubState) -> None:
    await _append(hub, 5)
    async with hub.sessions() as s:
        rows = (await s.scalars(select(AuditEntry).order_by(AuditEntry.seq))).all()
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0].prev_hash == audit.GENESIS_HASH
        assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, 5))
        report = await verify_chain(s)
    assert report.ok
    assert report.entries == 5
    assert report.head_hash == rows[-1].hash


async def test_entry_rolls_back_with_the_change(hub: HubState) -> None:
    async def failing_change() -> None:
        async with transaction(hub.sessions) as s:
            await audit.record(s, Actor.system("test"), "test.event", "thing", "x", {})
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    async with hub.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(AuditEntry)) == 0


async def test_concurrent_appends_keep_one_contiguous_chain(hub: HubState) -> None:
    await asyncio.gather(*(_append(hub, 5) for _ in range(6)))
    async with hub.sessions() as s:
        report = await verify_chain(s)
    assert report.ok, report.problems
    assert report.entries == 30


def _superuser(db_url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(libpq_conninfo(db_url), autocommit=True)


async def test_database_refuses_update_delete_truncate(hub: HubState, db_url: str) -> None:
    await _append(hub, 2)
    with _superuser(db_url) as conn:
        for statement in (
            "UPDATE audit_log SET action = 'x' WHERE seq = 1",
            "DELETE FROM audit_log WHERE seq = 2",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("UPDATE audit_log SET details = '{\"i\": 99}' WHERE seq = 2", "content does not match"),
        ("DELETE FROM audit_log WHERE seq = 2", "sequence gap"),
        ("UPDATE audit_log SET actor_id = 'someone-else' WHERE seq = 3", "content does not match"),
        (
            "UPDATE audit_log SET hash = repeat('a', 64) WHERE seq = 2",
            "prev_hash does not match",
        ),
    ],
)
async def test_verify_detects_tampering(hub: HubState, db_url: str, tamper: str, expected: str) -> None:
    await _append(hub, 4)
    with _superuser(db_url) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        conn.execute(tamper)
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    async with hub.sessions() as s:
        report = await verify_chain(s)
    assert not report.ok
    assert any(expected in p.problem for p in report.problems), report.problems
