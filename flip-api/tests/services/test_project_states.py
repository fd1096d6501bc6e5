"""The project and decision transition tables, and the staging precondition registry."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict, InvalidTransition
from flip_api.core.state import HubState
from flip_api.db.models import Project, ProjectStatus, TrustDecision
from flip_api.db.session import transaction
from flip_api.services import staging
from flip_api.services.audit import Actor
from flip_api.services.project_states import (
    DECISION_TRANSITIONS,
    PROJECT_TRANSITIONS,
    ProjectEvent,
    can,
    decide_transition,
    transition,
)
from flip_api.services.staging import StagingBlocked, StagingProblem, check_staging
from flip_api.services.trusts import register_trust

S = ProjectStatus
E = ProjectEvent
D = TrustDecision

ALLOWED = {
    (S.UNSTAGED, E.EDIT): S.UNSTAGED,
    (S.UNSTAGED, E.STAGE): S.STAGED,
    (S.STAGED, E.UNSTAGE): S.UNSTAGED,
    (S.STAGED, E.TRUST_APPROVED): S.APPROVED,
    (S.APPROVED, E.TRUST_APPROVED): S.APPROVED,
    (S.STAGED, E.TRUST_DECLINED): S.STAGED,
    (S.APPROVED, E.TRUST_DECLINED): S.APPROVED,
}


def test_project_table_is_exactly_the_documented_machine() -> None:
    assert PROJECT_TRANSITIONS == ALLOWED


@pytest.mark.parametrize(("status", "event"), list(itertools.product(S, E)))
def test_every_project_pair_is_allowed_or_refused(status: ProjectStatus, event: ProjectEvent) -> None:
    if (status, event) in ALLOWED:
        assert can(status, event)
        assert transition(status, event) is ALLOWED[(status, event)]
    else:
        assert not can(status, event)
        with pytest.raises(InvalidTransition) as raised:
            transition(status, event)
        assert raised.value.status_code == 409
        assert status.value in raised.value.detail


def test_first_approval_approves_and_declines_never_do() -> None:
    assert transition(S.STAGED, E.TRUST_APPROVED) is S.APPROVED
    assert transition(S.STAGED, E.TRUST_DECLINED) is S.STAGED
    assert transition(S.APPROVED, E.TRUST_DECLINED) is S.APPROVED


@pytest.mark.parametrize(
    ("status", "event", "code"),
    [
        (S.STAGED, E.EDIT, "project_not_editable"),
        (S.APPROVED, E.EDIT, "project_not_editable"),
        (S.UNSTAGED, E.TRUST_APPROVED, "project_not_staged"),
        (S.UNSTAGED, E.TRUST_DECLINED, "project_not_staged"),
        (S.APPROVED, E.UNSTAGE, "invalid_transition"),
        (S.UNSTAGED, E.UNSTAGE, "invalid_transition"),
        (S.STAGED, E.STAGE, "invalid_transition"),
        (S.APPROVED, E.STAGE, "invalid_transition"),
    ],
)
def test_refusal_codes(status: ProjectStatus, event: ProjectEvent, code: str) -> None:
    with pytest.raises(InvalidTransition) as raised:
        transition(status, event)
    assert raised.value.code == code


def test_decision_table() -> None:
    assert DECISION_TRANSITIONS == {(D.PENDING, D.APPROVED): D.APPROVED, (D.PENDING, D.DECLINED): D.DECLINED}
    assert decide_transition(D.PENDING, D.APPROVED) is D.APPROVED
    assert decide_transition(D.PENDING, D.DECLINED) is D.DECLINED


@pytest.mark.parametrize(("current", "requested"), list(itertools.product([D.APPROVED, D.DECLINED], D)))
def test_decisions_are_final(current: TrustDecision, requested: TrustDecision) -> None:
    with pytest.raises(InvalidTransition) as raised:
        decide_transition(current, requested)
    assert raised.value.code == "decision_final"


def test_pending_is_not_a_decision() -> None:
    with pytest.raises(InvalidTransition) as raised:
        decide_transition(D.PENDING, D.PENDING)
    assert raised.value.code == "invalid_decision"


# --------------------------------------------------------------------------- staging preconditions


def _project() -> Project:
    return Project(id=uuid.uuid4(), name="p", description="", has_imaging=False, dicom_to_nifti=False)


@pytest.fixture
def basic_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the checks that need no cohort (the cohort check is tested through the API in test_cohorts)."""
    monkeypatch.setattr(staging, "STAGING_CHECKS", [staging.at_least_one_trust, staging.trusts_exist])


def test_registry_holds_the_documented_checks() -> None:
    assert [
        staging.at_least_one_trust,
        staging.trusts_exist,
        staging.cohort_usable_at_every_trust,
    ] == staging.STAGING_CHECKS


@pytest.mark.usefixtures("basic_checks")
async def test_basic_checks_pass_for_known_trusts(hub: HubState, db: AsyncSession) -> None:
    async with transaction(hub.sessions) as s:
        issued = await register_trust(
            s, Actor.system("test"), data_key=hub.data_key, hub_url="http://hub.test", name="Trust K", code="K1"
        )
    await check_staging(db, _project(), [issued.trust.id])


@pytest.mark.usefixtures("basic_checks")
async def test_basic_checks_report_every_problem(db: AsyncSession) -> None:
    with pytest.raises(StagingBlocked) as raised:
        await check_staging(db, _project(), [])
    assert [(p.trust_id, p.code) for p in raised.value.problems] == [(None, "no_trusts")]
    assert isinstance(raised.value, Conflict)
    assert raised.value.code == "staging_precondition_failed"

    missing = [uuid.uuid4(), uuid.uuid4()]
    with pytest.raises(StagingBlocked) as raised:
        await check_staging(db, _project(), missing)
    assert [(p.trust_id, p.code) for p in raised.value.problems] == [(t, "unknown_trust") for t in missing]
    assert str(missing[1]) in raised.value.detail


@pytest.mark.usefixtures("basic_checks")
async def test_a_registered_check_is_one_function_and_one_line(
    db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[uuid.UUID]] = []

    async def always_unhappy(
        db: AsyncSession, project: Project, trust_ids: Sequence[uuid.UUID]
    ) -> list[StagingProblem]:
        seen.append(list(trust_ids))
        return [StagingProblem(None, "not_today", "try tomorrow")]

    monkeypatch.setattr(staging, "STAGING_CHECKS", list(staging.STAGING_CHECKS))
    staging.STAGING_CHECKS.append(always_unhappy)
    with pytest.raises(StagingBlocked) as raised:
        await check_staging(db, _project(), [])
    assert [p.code for p in raised.value.problems] == ["no_trusts", "not_today"]
    assert seen == [[]]
