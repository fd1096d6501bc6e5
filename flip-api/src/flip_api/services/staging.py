"""Preconditions a project must meet before it can be staged at a set of trusts.

Each precondition is a :class:`StagingCheck`: an async callable that inspects the project and the chosen
trusts and returns the problems it finds (an empty list when satisfied).  Adding a precondition is one
function plus one ``STAGING_CHECKS.append(...)`` line; :func:`check_staging` runs them all and refuses
staging with every problem listed, so the researcher can fix them in one go.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict
from flip_api.db.models import Project, Trust
from flip_api.services.cohort_views import CohortState, latest_states


@dataclass(frozen=True)
class StagingProblem:
    """One unmet precondition; ``trust_id`` is None when it concerns the project as a whole."""

    trust_id: uuid.UUID | None
    code: str
    detail: str

    def describe(self) -> str:
        where = f"trust {self.trust_id}: " if self.trust_id is not None else ""
        return f"{where}{self.detail} ({self.code})"


class StagingCheck(Protocol):
    """A staging precondition: returns the problems found, or an empty list."""

    async def __call__(
        self, db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]
    ) -> list[StagingProblem]: ...


class StagingBlocked(Conflict):
    """Staging refused because preconditions are unmet; ``problems`` lists each of them."""

    code = "staging_precondition_failed"

    def __init__(self, problems: Sequence[StagingProblem]) -> None:
        self.problems = list(problems)
        super().__init__("the project cannot be staged: " + "; ".join(p.describe() for p in self.problems))


async def at_least_one_trust(
    db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]
) -> list[StagingProblem]:
    """A project is staged at one trust or more."""
    if trust_ids:
        return []
    return [StagingProblem(None, "no_trusts", "choose at least one trust")]


async def trusts_exist(db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]) -> list[StagingProblem]:
    """Every chosen trust is registered at the hub."""
    if not trust_ids:
        return []
    known = set((await db.scalars(select(Trust.id).where(Trust.id.in_(trust_ids)))).all())
    return [
        StagingProblem(tid, "unknown_trust", "no such trust is registered") for tid in trust_ids if tid not in known
    ]


# What to tell the researcher about a trust whose answer to the query of record cannot be used.
_UNUSABLE: dict[CohortState, tuple[str, str]] = {
    CohortState.QUEUED: ("cohort_pending", "the trust has not answered the latest cohort query yet"),
    CohortState.RUNNING: ("cohort_pending", "the trust is still running the latest cohort query"),
    CohortState.SUPPRESSED: (
        "cohort_suppressed",
        "the cohort count is under the trust's disclosure threshold; broaden the query",
    ),
    CohortState.ERROR: ("cohort_error", "the trust could not run the latest cohort query"),
    CohortState.CANCELLED: ("cohort_cancelled", "the latest cohort query was cancelled at this trust; submit it again"),
}


async def cohort_usable_at_every_trust(
    db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]
) -> list[StagingProblem]:
    """The query of record has a usable count (done: released, not suppressed, no error) at every chosen trust."""
    query, states = await latest_states(db, project.id)
    if query is None:
        return [StagingProblem(None, "no_cohort_query", "save and submit a cohort query first")]
    # Unregistered trusts are reported by trusts_exist; saying more about them would only repeat it.
    known = set((await db.scalars(select(Trust.id).where(Trust.id.in_(trust_ids)))).all()) if trust_ids else set()
    problems = []
    for tid in trust_ids:
        if tid not in known:
            continue
        if tid not in states:
            problems.append(
                StagingProblem(tid, "cohort_not_submitted", f"version {query.version} was never sent to this trust")
            )
            continue
        state, error_code = states[tid]
        if state in _UNUSABLE:
            code, detail = _UNUSABLE[state]
            if error_code and state is CohortState.ERROR:
                detail = f"{detail}: {error_code}"
            problems.append(StagingProblem(tid, code, detail))
    return problems


STAGING_CHECKS: list[StagingCheck] = [at_least_one_trust, trusts_exist, cohort_usable_at_every_trust]


async def check_staging(db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]) -> None:
    """Run every registered check; raise :class:`StagingBlocked` (409) listing all problems found."""
    problems: list[StagingProblem] = []
    for check in STAGING_CHECKS:
        problems.extend(await check(db, project, trust_ids))
    if problems:
        raise StagingBlocked(problems)
