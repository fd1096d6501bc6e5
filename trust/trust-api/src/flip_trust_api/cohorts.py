"""Cohort task handlers: ``cohort_query`` and ``persist_cohort`` are answered by the data-access-api.

The agent only relays: it checks the payload against the wire contract, asks the data-access-api (whose
disclosure gate makes every number), and checks the answer against the contract again before it goes
to the outbox — so even a misbehaving data-access-api cannot send the hub a number outside a gated count.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from flip_core.cohort import (
    CohortErrorCode,
    CohortQueryPayload,
    CohortSnapshotInfo,
    CohortStatistics,
    PersistCohortPayload,
)
from flip_core.tasks import TaskType
from flip_trust_api.handlers import HandlerRegistry, ServicePort, TaskContext, TaskFailure


def _data_access(ctx: TaskContext) -> ServicePort:
    client = ctx.services.data_access
    if client is None:
        raise TaskFailure(
            CohortErrorCode.DATA_UNAVAILABLE.value,
            "this trust has no data-access-api configured (FLIP_AGENT_DATA_ACCESS_URL)",
        )
    return client


def _checked(model: type[CohortStatistics] | type[CohortSnapshotInfo], answer: dict[str, Any]) -> dict[str, Any]:
    try:
        return model.model_validate(answer).model_dump(mode="json")
    except ValidationError as exc:
        raise TaskFailure(
            CohortErrorCode.INTERNAL_ERROR.value, "the data-access-api answered outside the cohort contract"
        ) from exc


async def cohort_query(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Gated statistics of the project's cohort query at this trust."""
    request = CohortQueryPayload.model_validate(payload)
    answer = await _data_access(ctx).post("/cohort/statistics", request)
    result = _checked(CohortStatistics, answer)
    if result["query_id"] != str(request.query_id):
        raise TaskFailure(CohortErrorCode.INTERNAL_ERROR.value, "the data-access-api answered another query")
    return result


async def persist_cohort(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Freeze the approved project's cohort at this trust (idempotent)."""
    request = PersistCohortPayload.model_validate(payload)
    answer = await _data_access(ctx).post("/cohort/snapshot", request)
    result = _checked(CohortSnapshotInfo, answer)
    if result["project_id"] != str(request.project_id):
        raise TaskFailure(CohortErrorCode.INTERNAL_ERROR.value, "the data-access-api froze another project")
    return result


def register(registry: HandlerRegistry) -> None:
    """Add the cohort handlers (cohort queries can be heavy: a couple at a time; freezing one at a time)."""
    registry.register(TaskType.COHORT_QUERY, cohort_query, concurrency=2)
    registry.register(TaskType.PERSIST_COHORT, persist_cohort, concurrency=1)
