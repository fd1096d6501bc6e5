"""The project and per-trust decision state machines, as explicit transition tables.

Every status change of a project or of a trust's decision goes through :func:`transition` or
:func:`decide_transition`; anything not listed in the tables is refused with a 409, so an illegal
transition cannot happen by forgetting a check somewhere else.

The one approval rule (SPEC §3.2): a project becomes APPROVED at the first trust approval; trusts that
approve later join the already-approved project; if every trust declines, the project stays STAGED.
"""

from __future__ import annotations

from enum import StrEnum

from flip_api.core.errors import InvalidTransition
from flip_api.db.models import ProjectStatus, TrustDecision


class ProjectEvent(StrEnum):
    """What can happen to a project."""

    EDIT = "EDIT"  # details or members change
    STAGE = "STAGE"
    UNSTAGE = "UNSTAGE"
    TRUST_APPROVED = "TRUST_APPROVED"
    TRUST_DECLINED = "TRUST_DECLINED"


PROJECT_TRANSITIONS: dict[tuple[ProjectStatus, ProjectEvent], ProjectStatus] = {
    (ProjectStatus.UNSTAGED, ProjectEvent.EDIT): ProjectStatus.UNSTAGED,
    (ProjectStatus.UNSTAGED, ProjectEvent.STAGE): ProjectStatus.STAGED,
    (ProjectStatus.STAGED, ProjectEvent.UNSTAGE): ProjectStatus.UNSTAGED,
    # The first approval approves the project ...
    (ProjectStatus.STAGED, ProjectEvent.TRUST_APPROVED): ProjectStatus.APPROVED,
    # ... later approvals join it; declines never change the project's status.
    (ProjectStatus.APPROVED, ProjectEvent.TRUST_APPROVED): ProjectStatus.APPROVED,
    (ProjectStatus.STAGED, ProjectEvent.TRUST_DECLINED): ProjectStatus.STAGED,
    (ProjectStatus.APPROVED, ProjectEvent.TRUST_DECLINED): ProjectStatus.APPROVED,
}

# The machine code a refused event answers with, where a more specific one helps the client.
_REFUSAL_CODES: dict[ProjectEvent, str] = {
    ProjectEvent.EDIT: "project_not_editable",
    ProjectEvent.TRUST_APPROVED: "project_not_staged",
    ProjectEvent.TRUST_DECLINED: "project_not_staged",
}

_REFUSAL_REASONS: dict[ProjectEvent, str] = {
    ProjectEvent.EDIT: "only an UNSTAGED project can be changed",
    ProjectEvent.STAGE: "only an UNSTAGED project can be staged",
    ProjectEvent.UNSTAGE: "only a STAGED project can be unstaged",
    ProjectEvent.TRUST_APPROVED: "decisions can only be made on a STAGED or APPROVED project",
    ProjectEvent.TRUST_DECLINED: "decisions can only be made on a STAGED or APPROVED project",
}

DECISION_TRANSITIONS: dict[tuple[TrustDecision, TrustDecision], TrustDecision] = {
    (TrustDecision.PENDING, TrustDecision.APPROVED): TrustDecision.APPROVED,
    (TrustDecision.PENDING, TrustDecision.DECLINED): TrustDecision.DECLINED,
}


def can(current: ProjectStatus, event: ProjectEvent) -> bool:
    """Whether ``event`` is allowed for a project in status ``current``."""
    return (current, event) in PROJECT_TRANSITIONS


def transition(current: ProjectStatus, event: ProjectEvent) -> ProjectStatus:
    """The project's next status; raises :class:`InvalidTransition` (409) for anything not in the table."""
    try:
        return PROJECT_TRANSITIONS[(current, event)]
    except KeyError:
        code = _REFUSAL_CODES.get(event, "invalid_transition")
        raise InvalidTransition(f"project is {current.value}: {_REFUSAL_REASONS[event]}", code=code) from None


def decide_transition(current: TrustDecision, requested: TrustDecision) -> TrustDecision:
    """A trust's next decision; a decision once made is final (409 ``decision_final``)."""
    try:
        return DECISION_TRANSITIONS[(current, requested)]
    except KeyError:
        if current is TrustDecision.PENDING:
            raise InvalidTransition(f"{requested.value} is not a decision", code="invalid_decision") from None
        raise InvalidTransition(
            f"this trust has already {current.value.lower()} the project; the decision is final",
            code="decision_final",
        ) from None
