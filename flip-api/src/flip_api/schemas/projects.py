"""Request and response bodies of the project routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool

from flip_api.db.models import DecidedAs, ProjectStatus, TrustDecision
from flip_api.schemas.common import LongText, Name, Public, Strict
from flip_api.services.project_views import ProjectView
from flip_api.services.projects import DecisionOutcome

MAX_IDS = 500


class ProjectCreate(Strict):
    name: Name
    description: LongText = ""
    has_imaging: StrictBool = Field(description="whether the project uses imaging; fixed at creation")
    dicom_to_nifti: StrictBool = Field(False, description="convert DICOM to NIfTI; needs has_imaging; fixed")
    member_ids: Annotated[list[uuid.UUID], Field(max_length=MAX_IDS)] = []


class ProjectUpdate(Strict):
    """Only name and description can change, and only while the project is UNSTAGED."""

    name: Name | None = None
    description: LongText | None = None


class StageIn(Strict):
    trust_ids: Annotated[list[uuid.UUID], Field(max_length=MAX_IDS)]


class DecisionIn(Strict):
    decision: Literal["APPROVED", "DECLINED"]


class MemberIn(Strict):
    user_id: uuid.UUID


class ProjectTrustOut(Public):
    trust_id: uuid.UUID
    trust_name: str
    trust_code: str
    staged_at: datetime
    decision: TrustDecision
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    decided_as: DecidedAs | None
    decides_as: DecidedAs = Field(description="SITE when the trust has Trust Admins, else HUB")


class ProjectOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    owner_id: uuid.UUID
    owner_email: str
    has_imaging: bool
    dicom_to_nifti: bool
    status: ProjectStatus
    created_at: datetime
    staged_at: datetime | None
    approved_at: datetime | None
    member_ids: list[uuid.UUID]
    trusts: list[ProjectTrustOut]

    @classmethod
    def of(cls, view: ProjectView) -> ProjectOut:
        p = view.project
        return cls(
            id=p.id,
            name=p.name,
            description=p.description,
            owner_id=p.owner_id,
            owner_email=view.owner_email,
            has_imaging=p.has_imaging,
            dicom_to_nifti=p.dicom_to_nifti,
            status=p.status,
            created_at=p.created_at,
            staged_at=p.staged_at,
            approved_at=p.approved_at,
            member_ids=view.member_ids,
            trusts=[ProjectTrustOut.model_validate(t) for t in view.trusts],
        )


class MemberOut(Public):
    user_id: uuid.UUID
    email: str
    name: str
    added_at: datetime


class DecisionOut(BaseModel):
    """A trust's decision and the project's status after it."""

    project_id: uuid.UUID
    project_status: ProjectStatus
    approved_at: datetime | None
    trust_id: uuid.UUID
    decision: TrustDecision
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    decided_as: DecidedAs | None
    changed: bool = Field(description="False when this repeated a decision already recorded")

    @classmethod
    def of(cls, outcome: DecisionOutcome) -> DecisionOut:
        return cls(
            project_id=outcome.project.id,
            project_status=outcome.project.status,
            approved_at=outcome.project.approved_at,
            trust_id=outcome.row.trust_id,
            decision=outcome.row.decision,
            decided_by=outcome.row.decided_by,
            decided_at=outcome.row.decided_at,
            decided_as=outcome.row.decided_as,
            changed=outcome.changed,
        )


class TrustInboxOut(Public):
    """A project staged at a trust, as its decision makers see it."""

    project_id: uuid.UUID
    project_name: str
    description: str
    owner_email: str
    project_status: ProjectStatus
    has_imaging: bool
    staged_at: datetime
    decision: TrustDecision
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    decided_as: DecidedAs | None
