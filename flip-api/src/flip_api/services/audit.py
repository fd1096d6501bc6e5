"""The append-only, hash-chained audit log: append in the caller's transaction, verify the chain.

Each entry's hash is SHA-256 over the canonical JSON of its fields and the previous entry's hash.
Appends take a transaction-scoped advisory lock so that sequence numbers are contiguous and the chain
never forks, even with several hub replicas.  The table itself refuses UPDATE/DELETE/TRUNCATE.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.db.models import AuditEntry

GENESIS_HASH = "0" * 64
_AUDIT_LOCK = 726002


class ActorType(StrEnum):
    USER = "user"
    TRUST = "trust"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Actor:
    type: ActorType
    id: str

    @classmethod
    def user(cls, user_id: uuid.UUID) -> Actor:
        return cls(ActorType.USER, str(user_id))

    @classmethod
    def trust(cls, trust_id: uuid.UUID) -> Actor:
        return cls(ActorType.TRUST, str(trust_id))

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(ActorType.SYSTEM, name)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(
    *,
    seq: int,
    at: datetime,
    actor_type: str,
    actor_id: str,
    action: str,
    subject_type: str,
    subject_id: str,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    body = {
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": [actor_type, actor_id],
        "action": action,
        "subject": [subject_type, subject_id],
        "details": details,
        "prev": prev_hash,
    }
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    # Round-trip so that what we hash is exactly what JSONB hands back on verification.
    result: dict[str, Any] = json.loads(_canonical(details))
    return result


async def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: uuid.UUID | str,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's transaction (it commits or rolls back with the change)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK})
    last = (
        await session.execute(select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1))
    ).first()
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS_HASH if last is None else last.hash
    at = datetime.now(UTC)
    clean = _jsonable(details or {})
    entry = AuditEntry(
        seq=seq,
        at=at,
        actor_type=actor.type.value,
        actor_id=actor.id,
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id),
        details=clean,
        prev_hash=prev,
    )
    entry.hash = entry_hash(
        seq=seq,
        at=at,
        actor_type=entry.actor_type,
        actor_id=entry.actor_id,
        action=action,
        subject_type=subject_type,
        subject_id=entry.subject_id,
        details=clean,
        prev_hash=prev,
    )
    session.add(entry)
    await session.flush()
    return entry


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    head_hash: str
    problems: list[ChainProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


async def _iter_entries(session: AsyncSession, batch: int = 5000) -> AsyncIterator[AuditEntry]:
    after = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq).limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq


async def verify_chain(session: AsyncSession, max_problems: int = 100) -> VerifyReport:
    """Recompute every hash in order; report gaps, broken links and altered entries."""
    problems: list[ChainProblem] = []
    expected_seq = 1
    prev = GENESIS_HASH
    count = 0
    async for entry in _iter_entries(session):
        count += 1
        if entry.seq != expected_seq:
            problems.append(ChainProblem(entry.seq, f"sequence gap: expected {expected_seq}"))
        if entry.prev_hash != prev:
            problems.append(ChainProblem(entry.seq, "prev_hash does not match the previous entry"))
        recomputed = entry_hash(
            seq=entry.seq,
            at=entry.at,
            actor_type=entry.actor_type,
            actor_id=entry.actor_id,
            action=entry.action,
            subject_type=entry.subject_type,
            subject_id=entry.subject_id,
            details=entry.details,
            prev_hash=entry.prev_hash,
        )
        if recomputed != entry.hash:
            problems.append(ChainProblem(entry.seq, "entry content does not match its hash"))
        prev = entry.hash
        expected_seq = entry.seq + 1
        if len(problems) >= max_problems:
            break
    return VerifyReport(entries=count, head_hash=prev, problems=problems)
