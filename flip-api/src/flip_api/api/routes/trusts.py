"""Trusts: the roster any signed-in user can read, registration and key rotation, Trust Admins."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import func, or_, select

from flip_api.api.deps import AdminTrusts, CurrentUser, HubDep, PageDep, SessionDep
from flip_api.core.errors import Forbidden, NotFound
from flip_api.core.permissions import Perm
from flip_api.db.models import Trust, User
from flip_api.schemas.common import Page
from flip_api.schemas.tasks import PingIn, TaskDetailOut, TaskOut
from flip_api.schemas.trusts import KitOut, TrustAdminIn, TrustAdminOut, TrustOut, TrustRegister
from flip_api.services import tasks, trusts, users
from flip_api.services.audit import Actor
from flip_api.services.rbac import Principal
from flip_core.tasks import PingPayload, TaskStatus, TaskType

router = APIRouter(prefix="/trusts", tags=["trusts"])


async def trust_outs(db: SessionDep, rows: Sequence[Trust]) -> list[TrustOut]:
    managed = await trusts.managed_trust_ids(db, [t.id for t in rows])
    now = datetime.now(UTC)
    return [
        TrustOut(
            id=t.id,
            name=t.name,
            code=t.code,
            region=t.region,
            created_at=t.created_at,
            last_heartbeat=t.last_heartbeat,
            status=trusts.trust_status(t, now),
            services_health=t.services_health,
            decides_as="SITE" if t.id in managed else "HUB",
        )
        for t in rows
    ]


async def trust_out(db: SessionDep, trust: Trust) -> TrustOut:
    (out,) = await trust_outs(db, [trust])
    return out


@router.get("", response_model=Page[TrustOut])
async def list_trusts(
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    q: Annotated[str | None, Query(max_length=200, description="text in the name or code")] = None,
) -> Page[TrustOut]:
    """Registered trusts by name, with liveness and who decides for each (any signed-in user)."""
    query = select(Trust)
    if q:
        like = f"%{q.lower()}%"
        query = query.where(or_(func.lower(Trust.name).like(like), func.lower(Trust.code).like(like)))
    total = await db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = (await db.scalars(query.order_by(Trust.name, Trust.id).offset(page.offset).limit(page.page_size))).all()
    return Page(items=await trust_outs(db, rows), total=total, page=page.page, page_size=page.page_size)


@router.get("/{trust_id}", response_model=TrustOut)
async def get_trust(trust_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> TrustOut:
    return await trust_out(db, await trusts.get_trust(db, trust_id))


@router.post("", response_model=KitOut, status_code=status.HTTP_201_CREATED)
async def register_trust(body: TrustRegister, admin: AdminTrusts, hub: HubDep, db: SessionDep) -> KitOut:
    """Register a trust. The response holds its keys and kit file — shown this once only."""
    issued = await trusts.register_trust(
        db,
        Actor.user(admin.id),
        data_key=hub.data_key,
        hub_url=hub.settings.public_url,
        name=body.name,
        code=body.code,
        region=body.region,
    )
    await db.commit()
    return KitOut(
        trust=await trust_out(db, issued.trust),
        kit_env=issued.kit.to_env(),
        api_key=issued.kit.api_key,
        payload_key_id=issued.kit.payload_key_id,
    )


@router.post("/{trust_id}/rotate-keys", response_model=KitOut)
async def rotate_keys(trust_id: uuid.UUID, admin: AdminTrusts, hub: HubDep, db: SessionDep) -> KitOut:
    """Mint a new API key and payload key; the old API key stops working at once. Shown once."""
    trust = await db.get(Trust, trust_id, with_for_update=True)
    if trust is None:
        raise NotFound("trust not found", code="trust_not_found")
    issued = await trusts.rotate_keys(
        db, Actor.user(admin.id), data_key=hub.data_key, hub_url=hub.settings.public_url, trust=trust
    )
    await db.commit()
    return KitOut(
        trust=await trust_out(db, issued.trust),
        kit_env=issued.kit.to_env(),
        api_key=issued.kit.api_key,
        payload_key_id=issued.kit.payload_key_id,
    )


def _may_manage_admins(user: Principal, trust_id: uuid.UUID) -> None:
    if not (user.has(Perm.MANAGE_TRUSTS) or user.has_at(Perm.MANAGE_TRUST_GOVERNANCE, trust_id)):
        raise Forbidden(
            "appointing Trust Admins needs CAN_MANAGE_TRUSTS or CAN_MANAGE_TRUST_GOVERNANCE at this trust",
            code="not_trust_governor",
        )


@router.get("/{trust_id}/admins", response_model=list[TrustAdminOut])
async def list_admins(trust_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> list[TrustAdminOut]:
    """Who decides for this trust (empty: the hub admin decides)."""
    await trusts.get_trust(db, trust_id)
    return [TrustAdminOut(user_id=u.id, email=u.email, name=u.name) for u in await trusts.trust_admins(db, trust_id)]


@router.post("/{trust_id}/admins", response_model=list[TrustAdminOut])
async def add_admin(trust_id: uuid.UUID, body: TrustAdminIn, user: CurrentUser, db: SessionDep) -> list[TrustAdminOut]:
    """Appoint a Trust Admin (idempotent). From then on decisions for this trust are the site's."""
    _may_manage_admins(user, trust_id)
    trust = await trusts.get_trust(db, trust_id)
    target = await db.get(User, body.user_id)
    if target is None or not target.enabled:
        raise NotFound("no enabled user with that id", code="user_not_found")
    await users.grant_trust_role(db, Actor.user(user.id), target, trust)
    await db.commit()
    return [TrustAdminOut(user_id=u.id, email=u.email, name=u.name) for u in await trusts.trust_admins(db, trust_id)]


@router.delete("/{trust_id}/admins/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_admin(trust_id: uuid.UUID, user_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> Response:
    """Remove a Trust Admin; the last one cannot be removed (409)."""
    _may_manage_admins(user, trust_id)
    trust = await trusts.get_trust(db, trust_id)
    await trusts.remove_trust_admin(db, Actor.user(user.id), trust, user_id)
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{trust_id}/tasks", response_model=Page[TaskOut])
async def list_trust_tasks(
    trust_id: uuid.UUID,
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    status_filter: Annotated[TaskStatus | None, Query(alias="status")] = None,
) -> Page[TaskOut]:
    """The trust's work queue, newest first: types and states only, never payloads."""
    await trusts.get_trust(db, trust_id)
    rows, total = await tasks.list_tasks(db, trust_id, offset=page.offset, limit=page.page_size, status=status_filter)
    return Page(items=[TaskOut.model_validate(t) for t in rows], total=total, page=page.page, page_size=page.page_size)


@router.get("/{trust_id}/tasks/{task_id}", response_model=TaskDetailOut)
async def get_trust_task(trust_id: uuid.UUID, task_id: uuid.UUID, admin: AdminTrusts, db: SessionDep) -> TaskDetailOut:
    """One task with its stored result (trust administrators only)."""
    return TaskDetailOut.model_validate(await tasks.get_task(db, trust_id, task_id))


@router.post("/{trust_id}/ping", response_model=TaskOut, status_code=status.HTTP_202_ACCEPTED)
async def ping_trust(trust_id: uuid.UUID, body: PingIn, admin: AdminTrusts, hub: HubDep, db: SessionDep) -> TaskOut:
    """Send a ``ping`` task through the queue: proves the trust leases, decrypts and answers."""
    trust = await trusts.get_trust(db, trust_id)
    payload = PingPayload(message=body.message, sent_at=datetime.now(UTC))
    task = await tasks.enqueue_task(
        db, hub, trust, TaskType.PING, payload.model_dump(mode="json"), actor=Actor.user(admin.id)
    )
    await db.commit()
    return TaskOut.model_validate(task)
