"""The hub→trust task queue: enqueue, lease (SKIP LOCKED), extend, post results, expire, cancel.

``enqueue_task`` is the only way to create work for a trust.  Payloads are sealed with the trust's
current payload key for the purpose ``task:<type>`` and stored sealed.  A lease hands a task to one
agent for a bounded time with a random token; the result must carry that token.  A lease that runs out
returns the task to the queue (the next lease counts another attempt); after ``max_attempts`` the
task FAILS with a visible reason.  A task may depend on another: it is handed out only once that one
COMPLETED, and is cancelled if that one fails or is cancelled.

Task types whose outcome the hub must act on register a :class:`ResultHook` in ``RESULT_HOOKS``: it
validates a completed result before it is stored and is told, in the same transaction, whenever a task
of that type ends (completed, failed by the trust, out of leases, or cancelled).
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from flip_api.core.errors import Conflict, NotFound, Unprocessable
from flip_api.core.state import HubState
from flip_api.db.models import Trust, TrustTask
from flip_api.services import audit, cohort_results, imaging_results
from flip_api.services.audit import Actor
from flip_api.services.task_notifier import CHANNEL
from flip_api.services.trusts import payload_keyring
from flip_core.crypto import Envelope
from flip_core.tasks import (
    MAX_RESULT_BYTES,
    TERMINAL_STATUSES,
    LeasedTask,
    TaskResult,
    TaskStatus,
    TaskType,
    payload_purpose,
)

log = logging.getLogger(__name__)

SUBJECT = "trust_task"
DEFAULT_MAX_ATTEMPTS = 3
INVALID_RESULT = "invalid_result"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ResultHook:
    """What the hub does with the outcome of one task type, inside the transaction that records it.

    ``accept(db, task, result)`` checks a completed task's result before it is stored and returns what to
    store; it raises pydantic's ``ValidationError`` or a ``ValueError`` whose message is safe to keep, and
    the task then FAILS with ``invalid_result`` and none of the result is stored.
    ``finished(db, task, actor)`` runs once the task reached a terminal status, from every path that
    ends a task; ``actor`` is who ended it.
    """

    accept: Callable[[AsyncSession, TrustTask, dict[str, Any]], Awaitable[dict[str, Any]]]
    finished: Callable[[AsyncSession, TrustTask, Actor], Awaitable[None]]


_IMAGING_HOOK = ResultHook(imaging_results.accept_status, imaging_results.record_outcome)

RESULT_HOOKS: dict[str, ResultHook] = {
    TaskType.COHORT_QUERY: ResultHook(cohort_results.accept_statistics, cohort_results.record_query_outcome),
    TaskType.PERSIST_COHORT: ResultHook(cohort_results.accept_snapshot, cohort_results.record_snapshot_outcome),
    # Every imaging task answers with the same contract model, ImagingStatus.
    TaskType.CREATE_IMAGING: _IMAGING_HOOK,
    TaskType.GET_IMAGING_STATUS: _IMAGING_HOOK,
    TaskType.REIMPORT_STUDIES: _IMAGING_HOOK,
    TaskType.DELETE_IMAGING: _IMAGING_HOOK,
}


def _validation_summary(exc: ValidationError) -> str:
    """Where a result broke its model, without echoing any of its values (they may be ungated numbers)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "extra_forbidden":
            # The offending key is the trust's text: say only that a field was not expected.
            loc, msg = loc[:-1], "unexpected field"
        else:
            msg = err["msg"]
        parts.append(f"{'.'.join(loc) or 'result'}: {msg}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


async def enqueue_task(
    db: AsyncSession,
    hub: HubState,
    trust: Trust,
    task_type: TaskType,
    payload: dict[str, Any],
    *,
    actor: Actor | None = None,
    depends_on: uuid.UUID | None = None,
    subject: tuple[str, str] | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> TrustTask:
    """Queue work for ``trust`` in the caller's transaction; the trust is woken when it commits."""
    if depends_on is not None:
        parent = await db.get(TrustTask, depends_on)
        if parent is None or parent.trust_id != trust.id:
            raise Unprocessable("a task can only depend on an existing task of the same trust", code="bad_dependency")
    keyring = await payload_keyring(db, hub.data_key, trust)
    sealed = keyring.seal_json(payload_purpose(task_type), payload)
    task = TrustTask(
        id=uuid.uuid4(),
        trust_id=trust.id,
        type=task_type.value,
        status=TaskStatus.PENDING,
        payload=sealed.model_dump_json(),
        attempt=0,
        max_attempts=max_attempts,
        depends_on=depends_on,
        subject_type=subject[0] if subject else None,
        subject_id=subject[1] if subject else None,
    )
    db.add(task)
    await db.flush()
    await db.execute(text("SELECT pg_notify(:channel, :trust)"), {"channel": CHANNEL, "trust": str(trust.id)})
    await audit.record(
        db,
        actor or Actor.system("hub"),
        "task.enqueued",
        SUBJECT,
        task.id,
        {"trust_id": str(trust.id), "type": task_type.value, "depends_on": str(depends_on) if depends_on else None},
    )
    return task


# Built once: constructing an alias per lease costs more CPU than the lease query itself.
_PARENT = aliased(TrustTask, name="parent")


def _leasable(trust_id: uuid.UUID, now: datetime, types: Sequence[TaskType] | None) -> list[Any]:
    ready_parent = exists().where(_PARENT.id == TrustTask.depends_on, _PARENT.status == TaskStatus.COMPLETED)
    conditions: list[Any] = [
        TrustTask.trust_id == trust_id,
        or_(
            TrustTask.status == TaskStatus.PENDING,
            and_(TrustTask.status == TaskStatus.LEASED, TrustTask.lease_expires_at < now),
        ),
        or_(TrustTask.depends_on.is_(None), ready_parent),
    ]
    if types:
        conditions.append(TrustTask.type.in_([t.value for t in types]))
    return conditions


async def lease_tasks(
    db: AsyncSession,
    trust_id: uuid.UUID,
    *,
    max_tasks: int,
    lease_s: int,
    types: Sequence[TaskType] | None = None,
) -> list[LeasedTask]:
    """Lease up to ``max_tasks`` ready tasks, oldest first; rows locked by another leaser are skipped."""
    now = _now()
    rows = (
        await db.scalars(
            select(TrustTask)
            .where(*_leasable(trust_id, now, types))
            .order_by(TrustTask.created_at, TrustTask.id)
            .limit(max_tasks)
            .with_for_update(skip_locked=True)
        )
    ).all()
    leased: list[LeasedTask] = []
    for task in rows:
        if task.attempt >= task.max_attempts:
            # Its last lease ran out: stop retrying, fail visibly.
            await _finish(
                db,
                task,
                TaskStatus.FAILED,
                error={"code": "lease_expired", "detail": f"no result after {task.attempt} attempts"},
                actor=Actor.system("queue"),
            )
            continue
        task.status = TaskStatus.LEASED
        task.attempt += 1
        task.lease_token = secrets.token_urlsafe(32)
        task.leased_at = now
        task.lease_expires_at = now + timedelta(seconds=lease_s)
        leased.append(
            LeasedTask(
                id=task.id,
                type=TaskType(task.type),
                attempt=task.attempt,
                lease_token=task.lease_token,
                lease_expires_at=task.lease_expires_at,
                payload=Envelope.model_validate_json(task.payload),
                created_at=task.created_at,
            )
        )
    await db.flush()
    return leased


async def _task_of(db: AsyncSession, trust_id: uuid.UUID, task_id: uuid.UUID) -> TrustTask:
    task = await db.get(TrustTask, task_id, with_for_update=True)
    if task is None or task.trust_id != trust_id:
        raise NotFound("no such task for this trust", code="task_not_found")
    return task


def _stale(task: TrustTask) -> Conflict:
    return Conflict(
        f"the lease on task {task.id} is no longer yours (status {task.status.value}, attempt {task.attempt})",
        code="stale_lease",
    )


async def extend_lease(
    db: AsyncSession, trust_id: uuid.UUID, task_id: uuid.UUID, lease_token: str, extend_s: int
) -> TrustTask:
    """Push a held lease's expiry to now + ``extend_s`` (long-running work keeps its task)."""
    task = await _task_of(db, trust_id, task_id)
    now = _now()
    if (
        task.status is not TaskStatus.LEASED
        or not secrets.compare_digest(task.lease_token or "", lease_token)
        or (task.lease_expires_at is not None and task.lease_expires_at < now)
    ):
        raise _stale(task)
    task.lease_expires_at = now + timedelta(seconds=extend_s)
    await db.flush()
    return task


@dataclass(frozen=True)
class PostedResult:
    task: TrustTask
    duplicate: bool


async def post_result(db: AsyncSession, trust_id: uuid.UUID, task_id: uuid.UUID, body: TaskResult) -> PostedResult:
    """Store a task's outcome. Same token again → the stored outcome; any other stale token → 409."""
    task = await _task_of(db, trust_id, task_id)
    if task.result_token is not None and secrets.compare_digest(task.result_token, body.lease_token):
        return PostedResult(task, duplicate=True)
    if task.status is not TaskStatus.LEASED or not secrets.compare_digest(task.lease_token or "", body.lease_token):
        raise _stale(task)
    # A result that arrives after the lease ran out is still the work of the current holder (nobody
    # else has leased it since — that would have changed the token), so it is accepted.
    if body.outcome == "completed":
        size = len(json.dumps(body.result or {}))
        if size > MAX_RESULT_BYTES:
            raise Unprocessable(f"result is {size} bytes; the limit is {MAX_RESULT_BYTES}", code="result_too_large")
        await _complete(db, task, body.result or {}, actor=Actor.trust(trust_id))
    else:
        error = body.error.model_dump() if body.error else {"code": "unspecified", "detail": ""}
        if body.error is not None and body.error.retryable and task.attempt < task.max_attempts:
            # Give it back to the queue at once for another attempt.
            task.status = TaskStatus.PENDING
            task.lease_token = None
            task.lease_expires_at = None
            task.error = error
            await audit.record(db, Actor.trust(trust_id), "task.retry", SUBJECT, task.id, {"error": error})
            await db.execute(text("SELECT pg_notify(:c, :t)"), {"c": CHANNEL, "t": str(trust_id)})
        else:
            await _finish(db, task, TaskStatus.FAILED, error=error, actor=Actor.trust(trust_id))
    task.result_token = body.lease_token
    await db.flush()
    return PostedResult(task, duplicate=False)


async def _complete(db: AsyncSession, task: TrustTask, result: dict[str, Any], *, actor: Actor) -> None:
    """COMPLETED with the result, if the task type's hook accepts it; otherwise FAILED and nothing kept."""
    hook = RESULT_HOOKS.get(task.type)
    if hook is not None:
        try:
            result = await hook.accept(db, task, result)
        except ValidationError as exc:
            error = {"code": INVALID_RESULT, "detail": _validation_summary(exc)[:2000]}
            await _finish(db, task, TaskStatus.FAILED, error=error, actor=actor)
            return
        except ValueError as exc:
            await _finish(
                db, task, TaskStatus.FAILED, error={"code": INVALID_RESULT, "detail": str(exc)[:2000]}, actor=actor
            )
            return
    await _finish(db, task, TaskStatus.COMPLETED, result=result, actor=actor)


async def _finish(
    db: AsyncSession,
    task: TrustTask,
    status: TaskStatus,
    *,
    actor: Actor,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    task.status = status
    task.result = result
    task.error = error
    task.finished_at = _now()
    task.lease_token = None
    task.lease_expires_at = None
    action = {
        TaskStatus.COMPLETED: "task.completed",
        TaskStatus.FAILED: "task.failed",
        TaskStatus.CANCELLED: "task.cancelled",
    }[status]
    details: dict[str, Any] = {"trust_id": str(task.trust_id), "type": task.type, "attempt": task.attempt}
    if error:
        details["error"] = error
    await audit.record(db, actor, action, SUBJECT, task.id, details)
    hook = RESULT_HOOKS.get(task.type)
    if hook is not None:
        await hook.finished(db, task, actor)
    if status is not TaskStatus.COMPLETED:
        await _cancel_dependents(db, task)


async def _cancel_dependents(db: AsyncSession, parent: TrustTask) -> None:
    dependents = (
        await db.scalars(
            select(TrustTask)
            .where(TrustTask.depends_on == parent.id, TrustTask.status.not_in(TERMINAL_STATUSES))
            .with_for_update()
        )
    ).all()
    for task in dependents:
        await _finish(
            db,
            task,
            TaskStatus.CANCELLED,
            error={"code": "dependency_failed", "detail": f"task {parent.id} ended {parent.status.value}"},
            actor=Actor.system("queue"),
        )


async def cancel_task(db: AsyncSession, task: TrustTask, reason: str, actor: Actor) -> bool:
    """Cancel superseded work that has not finished; returns False if it had already finished."""
    if task.status in TERMINAL_STATUSES:
        return False
    await _finish(db, task, TaskStatus.CANCELLED, error={"code": "cancelled", "detail": reason}, actor=actor)
    return True


async def fail_exhausted_leases(db: AsyncSession, limit: int = 500) -> int:
    """Maintenance: fail tasks whose last allowed lease ran out (so the failure is visible promptly)."""
    now = _now()
    rows = (
        await db.scalars(
            select(TrustTask)
            .where(
                TrustTask.status == TaskStatus.LEASED,
                TrustTask.lease_expires_at < now,
                TrustTask.attempt >= TrustTask.max_attempts,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for task in rows:
        await _finish(
            db,
            task,
            TaskStatus.FAILED,
            error={"code": "lease_expired", "detail": f"no result after {task.attempt} attempts"},
            actor=Actor.system("queue"),
        )
    return len(rows)


async def get_task(db: AsyncSession, trust_id: uuid.UUID, task_id: uuid.UUID) -> TrustTask:
    task = await db.get(TrustTask, task_id)
    if task is None or task.trust_id != trust_id:
        raise NotFound("no such task for this trust", code="task_not_found")
    return task


async def list_tasks(
    db: AsyncSession, trust_id: uuid.UUID, *, offset: int, limit: int, status: TaskStatus | None = None
) -> tuple[list[TrustTask], int]:
    conditions: list[Any] = [TrustTask.trust_id == trust_id]
    if status is not None:
        conditions.append(TrustTask.status == status)
    total = await db.scalar(select(func.count()).select_from(TrustTask).where(*conditions)) or 0
    rows = await db.scalars(
        select(TrustTask)
        .where(*conditions)
        .order_by(TrustTask.created_at.desc(), TrustTask.id)
        .offset(offset)
        .limit(limit)
    )
    return list(rows.all()), total


async def count_by_status(db: AsyncSession, trust_id: uuid.UUID) -> dict[str, int]:
    rows = await db.execute(
        select(TrustTask.status, func.count()).where(TrustTask.trust_id == trust_id).group_by(TrustTask.status)
    )
    return {status.value: n for status, n in rows}


__all__ = [
    "RESULT_HOOKS",
    "PostedResult",
    "ResultHook",
    "cancel_task",
    "count_by_status",
    "enqueue_task",
    "extend_lease",
    "fail_exhausted_leases",
    "get_task",
    "lease_tasks",
    "list_tasks",
    "post_result",
]
