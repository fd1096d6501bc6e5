"""Cohort queries: saving versions, the hub's pre-check, sending a version to every trust, and the
``persist_cohort`` request made when a trust approves.

A project has one query of record: the highest saved version.  Versions are immutable rows; saving a
different SQL makes a new version, saving the same SQL again changes nothing.  Queries can only be
saved or submitted while the project is UNSTAGED (the EDIT event of the project state machine).

Submitting sends one ``cohort_query`` task per registered trust and creates (or resets) one
``cohort_results`` row per trust for that version; cohort tasks of the project still waiting from an
earlier submission are cancelled first, so a trust never works on a superseded question.  How each
task ends is ingested by :mod:`flip_api.services.cohort_results`; the read side is
:mod:`flip_api.services.cohort_views`.

Lock order (to stay clear of deadlocks with results arriving concurrently): the project row, then the
tasks being cancelled, all before this transaction writes its first audit entry (the audit append takes
a transaction-wide lock that result posts also need).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict, Unprocessable
from flip_api.core.state import HubState
from flip_api.db.models import CohortQuery, CohortResult, CohortResultState, Project, Trust, TrustTask
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.cohort_results import PROJECT_SUBJECT, QUERY_SUBJECT
from flip_api.services.cohort_views import latest_query
from flip_api.services.project_access import project_for_change
from flip_api.services.project_states import ProjectEvent, transition
from flip_api.services.rbac import Principal
from flip_api.services.tasks import cancel_task, enqueue_task
from flip_core.cohort import PERSON_COLUMN, CohortErrorCode, CohortQueryPayload, PersistCohortPayload
from flip_core.tasks import TaskStatus, TaskType


@dataclass(frozen=True)
class PrecheckOutcome:
    """The hub's verdict on a query text; ``rule`` and ``detail`` say what to fix when it is refused."""

    valid: bool
    rule: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class SavedQuery:
    query: CohortQuery
    created: bool  # False when the SQL was identical to the latest version (nothing saved)


def precheck_sql(sql: str) -> PrecheckOutcome:
    """Run the shared cohort SQL validator, the same rules the trusts enforce, to catch mistakes early.

    The trust's own validator remains the security boundary; this only spares the researcher a round
    trip to every trust for a query that would be refused anyway.
    """
    # Imported here: the validator pulls in a SQL parser that nothing else on the hub needs.
    from flip_core.cohort_sql import CohortSqlError, validate_cohort_sql

    try:
        validated = validate_cohort_sql(sql)
    except CohortSqlError as exc:
        return PrecheckOutcome(valid=False, rule=exc.rule, detail=exc.detail)
    # Counts are of distinct persons, so a query must return person_id; when its output names are known
    # the hub can say so now instead of every trust answering no_person_column.
    if validated.output_columns is not None and PERSON_COLUMN not in validated.output_columns:
        return PrecheckOutcome(
            valid=False,
            rule=CohortErrorCode.NO_PERSON_COLUMN.value,
            detail=f"the query must return a {PERSON_COLUMN} column (it returns {', '.join(validated.output_columns)})",
        )
    return PrecheckOutcome(valid=True)


def require_valid_sql(sql: str) -> None:
    """Refuse a query the pre-check rejects: 422 ``invalid_query`` with the validator's explanation."""
    outcome = precheck_sql(sql)
    if not outcome.valid:
        raise Unprocessable(outcome.detail or f"the query breaks rule {outcome.rule}", code="invalid_query")


async def save_query(
    db: AsyncSession, principal: Principal, project_id: uuid.UUID, *, name: str, sql: str
) -> SavedQuery:
    """Save a new version of the project's query (editors, UNSTAGED only); the same SQL again is a no-op."""
    project = await project_for_change(db, principal, project_id)
    transition(project.status, ProjectEvent.EDIT)
    sql = sql.strip()
    require_valid_sql(sql)
    latest = await latest_query(db, project.id)
    if latest is not None and latest.sql == sql:
        return SavedQuery(latest, created=False)
    # The project row is locked, so versions are handed out one at a time.
    query = CohortQuery(
        id=uuid.uuid4(),
        project_id=project.id,
        version=(latest.version + 1) if latest is not None else 1,
        name=name,
        sql=sql,
        created_by=principal.id,
    )
    db.add(query)
    await db.flush()
    await audit.record(
        db,
        Actor.user(principal.id),
        "cohort.query_saved",
        PROJECT_SUBJECT,
        project.id,
        {
            "query_id": str(query.id),
            "version": query.version,
            "name": name,
            "sql_sha256": hashlib.sha256(sql.encode()).hexdigest(),
            "sql_length": len(sql),
        },
    )
    return SavedQuery(query, created=True)


async def cancel_pending(
    db: AsyncSession,
    project_id: uuid.UUID,
    actor: Actor,
    reason: str,
    *,
    keep_trusts: Collection[uuid.UUID] = (),
) -> list[uuid.UUID]:
    """Cancel the project's cohort tasks that have not finished (except at ``keep_trusts``).

    Returns the cancelled task ids.  Each cancellation also marks its result row ``CANCELLED`` (through
    the queue's result hook).  Every task is locked before the first cancellation writes to the audit log.
    """
    stmt = (
        select(TrustTask)
        .join(CohortResult, CohortResult.task_id == TrustTask.id)
        .join(CohortQuery, CohortQuery.id == CohortResult.query_id)
        .where(
            CohortQuery.project_id == project_id,
            TrustTask.status.in_([TaskStatus.PENDING, TaskStatus.LEASED]),
        )
        .order_by(TrustTask.id)
        .with_for_update(of=TrustTask)
        .execution_options(populate_existing=True)
    )
    if keep_trusts:
        stmt = stmt.where(TrustTask.trust_id.not_in(list(keep_trusts)))
    tasks = (await db.scalars(stmt)).all()
    cancelled = []
    for task in tasks:
        if await cancel_task(db, task, reason, actor):
            cancelled.append(task.id)
    return cancelled


async def submit_query(db: AsyncSession, hub: HubState, principal: Principal, project_id: uuid.UUID) -> CohortQuery:
    """Send the query of record to every registered trust (editors, UNSTAGED only).

    Earlier cohort tasks of the project that are still pending are cancelled (superseded), and each
    trust's result row for this version starts again from ``PENDING``.
    """
    project = await project_for_change(db, principal, project_id)
    transition(project.status, ProjectEvent.EDIT)
    query = await latest_query(db, project.id)
    if query is None:
        raise Conflict("save a cohort query before submitting it", code="no_cohort_query")
    trusts = (await db.scalars(select(Trust).order_by(Trust.code))).all()
    if not trusts:
        raise Conflict("no trust is registered at the hub yet", code="no_trusts_registered")
    actor = Actor.user(principal.id)
    superseded = await cancel_pending(
        db, project.id, actor, f"superseded by version {query.version} of the cohort query"
    )
    rows = {
        row.trust_id: row
        for row in (
            await db.scalars(
                select(CohortResult)
                .where(CohortResult.query_id == query.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).all()
    }
    min_k = hub.settings.cohort_min_k
    payload = CohortQueryPayload(
        query_id=query.id, project_id=project.id, version=query.version, sql=query.sql, min_k=min_k
    ).model_dump(mode="json")
    for trust in trusts:
        task = await enqueue_task(
            db, hub, trust, TaskType.COHORT_QUERY, payload, actor=actor, subject=(QUERY_SUBJECT, str(query.id))
        )
        row = rows.get(trust.id)
        if row is None:
            row = CohortResult(id=uuid.uuid4(), query_id=query.id, trust_id=trust.id)
            db.add(row)
        _reset(row, task.id, min_k)
    await db.flush()
    await audit.record(
        db,
        actor,
        "cohort.query_submitted",
        PROJECT_SUBJECT,
        project.id,
        {
            "query_id": str(query.id),
            "version": query.version,
            "min_k": min_k,
            "trusts": len(trusts),
            "superseded_tasks": [str(t) for t in superseded],
        },
    )
    return query


def _reset(row: CohortResult, task_id: uuid.UUID, min_k: int) -> None:
    """A result row waiting for a fresh task: nothing from an earlier answer survives."""
    row.task_id = task_id
    row.state = CohortResultState.PENDING
    row.min_k = min_k
    row.record_count = None
    row.suppressed = False
    row.statistics = None
    row.error_code = None
    row.error_detail = None
    row.received_at = None


async def request_snapshot(
    db: AsyncSession, hub: HubState, project: Project, trust: Trust, *, actor: Actor
) -> TrustTask | None:
    """On a trust's approval: ask it to freeze the cohort of the query of record (``persist_cohort``).

    Returns the queued task (work that needs the frozen cohort, such as ``create_imaging``, depends on
    it), or None when the project has no query of record and nothing was queued.
    """
    query = await latest_query(db, project.id)
    if query is None:
        # Only a project staged before cohort queries existed can get here; say so rather than guess.
        await audit.record(
            db, actor, "cohort.snapshot_skipped", PROJECT_SUBJECT, project.id, {"trust_id": str(trust.id)}
        )
        return None
    payload = PersistCohortPayload(
        project_id=project.id, query_id=query.id, version=query.version, sql=query.sql, min_k=hub.settings.cohort_min_k
    ).model_dump(mode="json")
    task = await enqueue_task(
        db, hub, trust, TaskType.PERSIST_COHORT, payload, actor=actor, subject=(QUERY_SUBJECT, str(query.id))
    )
    await audit.record(
        db,
        actor,
        "cohort.snapshot_requested",
        PROJECT_SUBJECT,
        project.id,
        {"trust_id": str(trust.id), "query_id": str(query.id), "version": query.version, "task_id": str(task.id)},
    )
    return task
