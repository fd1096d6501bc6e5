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


STAGING_CHECKS: list[StagingCheck] = [at_least_one_trust, trusts_exist]


async def check_staging(db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]) -> None:
    """Run every registered check; raise :class:`StagingBlocked` (409) listing all problems found."""
    problems: list[StagingProblem] = []
    for check in STAGING_CHECKS:
        problems.extend(await check(db, project, trust_ids))
    if problems:
        raise StagingBlocked(problems)
