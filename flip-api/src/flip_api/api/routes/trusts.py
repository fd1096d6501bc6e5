"""Trusts: the roster any signed-in user can read, registration and key rotation, Trust Admins."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Response, status
from sqlalchemy import select

from flip_api.api.deps import AdminTrusts, CurrentUser, HubDep, SessionDep
from flip_api.core.errors import Forbidden, NotFound
from flip_api.core.permissions import Perm
from flip_api.db.models import Trust, User
from flip_api.schemas.trusts import KitOut, TrustAdminIn, TrustAdminOut, TrustOut, TrustRegister, TrustStatus
from flip_api.services import trusts, users
from flip_api.services.audit import Actor
from flip_api.services.rbac import Principal

router = APIRouter(prefix="/trusts", tags=["trusts"])

HEARTBEAT_TIMEOUT = timedelta(seconds=30)


def trust_status(trust: Trust, now: datetime | None = None) -> TrustStatus:
    """Online if a heartbeat arrived recently; degraded if a service it reported is not healthy."""
    if trust.last_heartbeat is None:
        return TrustStatus.NEVER_SEEN
    now = now or datetime.now(UTC)
    if now - trust.last_heartbeat > HEARTBEAT_TIMEOUT:
        return TrustStatus.OFFLINE
    services = (trust.services_health or {}).get("services", {})
    if isinstance(services, dict) and any(
        isinstance(s, dict) and s.get("state") not in (None, "healthy") for s in services.values()
    ):
        return TrustStatus.DEGRADED
    return TrustStatus.ONLINE


async def trust_out(db: SessionDep, trust: Trust) -> TrustOut:
    return TrustOut(
        id=trust.id,
        name=trust.name,
        code=trust.code,
        region=trust.region,
        created_at=trust.created_at,
        last_heartbeat=trust.last_heartbeat,
        status=trust_status(trust),
        services_health=trust.services_health,
        decides_as="SITE" if await trusts.has_trust_admins(db, trust.id) else "HUB",
    )


@router.get("", response_model=list[TrustOut])
async def list_trusts(user: CurrentUser, db: SessionDep) -> list[TrustOut]:
    """Every registered trust with its liveness (readable by any signed-in user)."""
    rows = (await db.scalars(select(Trust).order_by(Trust.name))).all()
    return [await trust_out(db, t) for t in rows]


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
