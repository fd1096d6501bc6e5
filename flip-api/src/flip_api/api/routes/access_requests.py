"""Access requests: a public form for would-be users, triaged by user administrators."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from sqlalchemy import func, select

from flip_api.api.deps import AdminUsers, HubDep, PageDep, SessionDep
from flip_api.api.routes.users import user_out
from flip_api.core.errors import Conflict, NotFound
from flip_api.db.models import AccessRequest, AccessRequestStatus
from flip_api.schemas.common import Page
from flip_api.schemas.users import AccessRequestAck, AccessRequestIn, AccessRequestOut, EnrolIn, UserCreated
from flip_api.services import audit, users
from flip_api.services.audit import Actor

router = APIRouter(prefix="/access-requests", tags=["access requests"])


@router.post("", response_model=AccessRequestAck, status_code=status.HTTP_202_ACCEPTED)
async def request_access(body: AccessRequestIn, request: Request, hub: HubDep, db: SessionDep) -> AccessRequestAck:
    """Ask for an account. The answer is the same whether or not the email is known (no enumeration)."""
    ip = request.client.host if request.client else "unknown"
    hub.limiter.check("access-request", ip, hub.settings.rate_limit_access_request_per_min)
    email = users.normalise_email(str(body.email))
    pending = await db.scalar(
        select(AccessRequest).where(
            func.lower(AccessRequest.email) == email, AccessRequest.status == AccessRequestStatus.PENDING
        )
    )
    if pending is None:
        row = AccessRequest(
            id=uuid.uuid4(), email=email, name=body.name, organisation=body.organisation, reason=body.reason
        )
        db.add(row)
        await db.flush()
        await audit.record(
            db, Actor(audit.ActorType.ANONYMOUS, ip), "access_request.created", "access_request", row.id, {}
        )
        await db.commit()
    return AccessRequestAck()


@router.get("", response_model=Page[AccessRequestOut])
async def list_requests(
    admin: AdminUsers,
    db: SessionDep,
    page: PageDep,
    status_filter: Annotated[AccessRequestStatus | None, Query(alias="status")] = None,
) -> Page[AccessRequestOut]:
    query = select(AccessRequest)
    if status_filter is not None:
        query = query.where(AccessRequest.status == status_filter)
    total = await db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = (
        await db.scalars(
            query.order_by(AccessRequest.created_at.desc(), AccessRequest.id).offset(page.offset).limit(page.page_size)
        )
    ).all()
    return Page(
        items=[AccessRequestOut.model_validate(r) for r in rows],
        total=total,
        page=page.page,
        page_size=page.page_size,
    )


async def _pending(db: SessionDep, request_id: uuid.UUID) -> AccessRequest:
    row = await db.get(AccessRequest, request_id, with_for_update=True)
    if row is None:
        raise NotFound("access request not found", code="access_request_not_found")
    if row.status is not AccessRequestStatus.PENDING:
        raise Conflict(f"access request is already {row.status.value}", code="access_request_handled")
    return row


@router.post("/{request_id}/enrol", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
async def enrol(request_id: uuid.UUID, body: EnrolIn, admin: AdminUsers, db: SessionDep) -> UserCreated:
    """Create the account for a pending request with the given global roles; password shown once."""
    row = await _pending(db, request_id)
    user, password = await users.create_user(
        db, Actor.user(admin.id), email=row.email, name=row.name, organisation=row.organisation, roles=body.roles
    )
    row.status = AccessRequestStatus.ENROLLED
    row.handled_by = admin.id
    row.user_id = user.id
    await audit.record(
        db, Actor.user(admin.id), "access_request.enrolled", "access_request", row.id, {"user_id": str(user.id)}
    )
    await db.commit()
    return UserCreated(user=await user_out(db, user), initial_password=password)


@router.post("/{request_id}/dismiss", response_model=AccessRequestOut)
async def dismiss(request_id: uuid.UUID, admin: AdminUsers, db: SessionDep) -> AccessRequestOut:
    row = await _pending(db, request_id)
    row.status = AccessRequestStatus.DISMISSED
    row.handled_by = admin.id
    await audit.record(db, Actor.user(admin.id), "access_request.dismissed", "access_request", row.id, {})
    await db.commit()
    return AccessRequestOut.model_validate(row)
