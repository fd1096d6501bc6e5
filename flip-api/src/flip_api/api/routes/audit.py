"""The audit log: query, export and chain verification (auditors and admins)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import Select, func, select

from flip_api.api.deps import AuditReader, PageDep, SessionDep
from flip_api.db.models import AuditEntry
from flip_api.schemas.common import Page, Public
from flip_api.services.audit import verify_chain

router = APIRouter(prefix="/audit", tags=["audit"])

EXPORT_LIMIT = 100_000


class AuditEntryOut(Public):
    seq: int
    at: datetime
    actor_type: str
    actor_id: str
    action: str
    subject_type: str
    subject_id: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class ChainProblemOut(BaseModel):
    seq: int
    problem: str


class VerifyOut(BaseModel):
    ok: bool
    entries: int
    head_hash: str
    problems: list[ChainProblemOut]


Filter = Annotated[str | None, Query(max_length=254)]


def _filtered(
    action: str | None, subject_type: str | None, subject_id: str | None, actor_id: str | None
) -> Select[Any]:
    query = select(AuditEntry)
    if action:
        query = query.where(AuditEntry.action == action)
    if subject_type:
        query = query.where(AuditEntry.subject_type == subject_type)
    if subject_id:
        query = query.where(AuditEntry.subject_id == subject_id)
    if actor_id:
        query = query.where(AuditEntry.actor_id == actor_id)
    return query


@router.get("", response_model=Page[AuditEntryOut])
async def list_entries(
    reader: AuditReader,
    db: SessionDep,
    page: PageDep,
    action: Filter = None,
    subject_type: Filter = None,
    subject_id: Filter = None,
    actor_id: Filter = None,
) -> Page[AuditEntryOut]:
    """Entries newest first, filtered by action, subject or actor."""
    query = _filtered(action, subject_type, subject_id, actor_id)
    total = await db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = (await db.scalars(query.order_by(AuditEntry.seq.desc()).offset(page.offset).limit(page.page_size))).all()
    return Page(
        items=[AuditEntryOut.model_validate(r) for r in rows], total=total, page=page.page, page_size=page.page_size
    )


@router.get("/export")
async def export(
    reader: AuditReader,
    db: SessionDep,
    fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    action: Filter = None,
    subject_type: Filter = None,
    subject_id: Filter = None,
    actor_id: Filter = None,
) -> Response:
    """Download entries (oldest first, up to 100,000) as JSON or CSV for governance review."""
    query = _filtered(action, subject_type, subject_id, actor_id)
    rows = (await db.scalars(query.order_by(AuditEntry.seq).limit(EXPORT_LIMIT))).all()
    entries = [AuditEntryOut.model_validate(r).model_dump(mode="json") for r in rows]
    if fmt == "json":
        return Response(
            json.dumps(entries, indent=1),
            media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="flip-audit.json"'},
        )
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(AuditEntryOut.model_fields))
    writer.writeheader()
    for entry in entries:
        writer.writerow({**entry, "details": json.dumps(entry["details"], sort_keys=True)})
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="flip-audit.csv"'},
    )


@router.get("/verify", response_model=VerifyOut)
async def verify(reader: AuditReader, db: SessionDep) -> VerifyOut:
    """Recompute the hash chain; ``ok`` is false if any entry was altered, removed or reordered."""
    report = await verify_chain(db)
    return VerifyOut(
        ok=report.ok,
        entries=report.entries,
        head_hash=report.head_hash,
        problems=[ChainProblemOut(seq=p.seq, problem=p.problem) for p in report.problems],
    )
