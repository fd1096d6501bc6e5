"""Trust registration, key rotation and Trust Admin appointment.

A trust's API key is shown once and stored only as a SHA-256 hash; its payload key is stored wrapped
with the hub data key (the hub needs it to encrypt tasks for that trust); its internal key (used
between the trust's own services) is minted into the kit and never stored on the hub.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import lazyload

from flip_api.core.errors import Conflict, NotFound
from flip_api.core.permissions import RoleName
from flip_api.core.security import open_secret, seal_secret
from flip_api.db.models import Trust, TrustPayloadKey, User, UserRole
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.rbac import role_by_name
from flip_core.contract import TrustKit
from flip_core.crypto import Keyring, encode_key, new_key
from flip_core.keys import INTERNAL_KEY_PREFIX, TRUST_API_KEY_PREFIX, hash_key, mint_key

_PAYLOAD_KEY_PURPOSE = "trust:payload-key"


@dataclass(frozen=True)
class IssuedKit:
    """The trust and its kit: returned once, at registration or rotation, never again."""

    trust: Trust
    kit: TrustKit


async def get_trust(db: AsyncSession, trust_id: uuid.UUID) -> Trust:
    trust = await db.get(Trust, trust_id)
    if trust is None:
        raise NotFound("trust not found", code="trust_not_found")
    return trust


async def _new_payload_key(db: AsyncSession, data_key: bytes, trust: Trust) -> tuple[str, bytes]:
    count = await db.scalar(select(func.count()).where(TrustPayloadKey.trust_id == trust.id)) or 0
    kid = f"trust-{trust.code.lower()}-{count + 1}"
    key = new_key()
    now = datetime.now(UTC)
    for old in (
        await db.scalars(
            select(TrustPayloadKey).where(TrustPayloadKey.trust_id == trust.id, TrustPayloadKey.retired_at.is_(None))
        )
    ).all():
        old.retired_at = now
    db.add(
        TrustPayloadKey(
            id=uuid.uuid4(),
            trust_id=trust.id,
            kid=kid,
            wrapped_key=seal_secret(data_key, f"{_PAYLOAD_KEY_PURPOSE}:{trust.id}:{kid}", key),
        )
    )
    trust.payload_key_id = kid
    return kid, key


async def register_trust(
    db: AsyncSession,
    actor: Actor,
    *,
    data_key: bytes,
    hub_url: str,
    name: str,
    code: str,
    region: str = "",
) -> IssuedKit:
    """Register a trust; returns the kit holding its keys in plaintext (the only time they exist)."""
    code = code.strip().upper()
    clash = await db.scalar(
        select(Trust).where((func.lower(Trust.name) == name.strip().lower()) | (Trust.code == code))
    )
    if clash is not None:
        field = "name" if clash.name.lower() == name.strip().lower() else "code"
        raise Conflict(f"a trust with this {field} is already registered", code="duplicate_trust")
    api_key = mint_key(TRUST_API_KEY_PREFIX)
    trust = Trust(
        id=uuid.uuid4(),
        name=name.strip(),
        code=code,
        region=region.strip(),
        api_key_hash=hash_key(api_key),
        payload_key_id="",
    )
    db.add(trust)
    await db.flush()
    kid, key = await _new_payload_key(db, data_key, trust)
    await db.flush()
    await audit.record(db, actor, "trust.registered", "trust", trust.id, {"name": trust.name, "code": code, "kid": kid})
    kit = TrustKit(
        hub_url=hub_url,
        trust_id=trust.id,
        trust_code=code,
        trust_name=trust.name,
        api_key=api_key,
        payload_key_id=kid,
        payload_key=encode_key(key),
        internal_key=mint_key(INTERNAL_KEY_PREFIX),
    )
    return IssuedKit(trust, kit)


async def rotate_keys(db: AsyncSession, actor: Actor, *, data_key: bytes, hub_url: str, trust: Trust) -> IssuedKit:
    """New API key and new current payload key; old payload keys stay in the keyring (retired)."""
    api_key = mint_key(TRUST_API_KEY_PREFIX)
    trust.api_key_hash = hash_key(api_key)
    kid, key = await _new_payload_key(db, data_key, trust)
    await db.flush()
    await audit.record(db, actor, "trust.keys_rotated", "trust", trust.id, {"kid": kid})
    kit = TrustKit(
        hub_url=hub_url,
        trust_id=trust.id,
        trust_code=trust.code,
        trust_name=trust.name,
        api_key=api_key,
        payload_key_id=kid,
        payload_key=encode_key(key),
        internal_key=mint_key(INTERNAL_KEY_PREFIX),
    )
    return IssuedKit(trust, kit)


async def payload_keyring(db: AsyncSession, data_key: bytes, trust: Trust) -> Keyring:
    """The trust's keyring (current key seals; retired keys still open older payloads)."""
    rows = (await db.scalars(select(TrustPayloadKey).where(TrustPayloadKey.trust_id == trust.id))).all()
    keys = {
        row.kid: open_secret(data_key, f"{_PAYLOAD_KEY_PURPOSE}:{trust.id}:{row.kid}", row.wrapped_key) for row in rows
    }
    return Keyring(keys, trust.payload_key_id)


async def trust_admins(db: AsyncSession, trust_id: uuid.UUID) -> list[User]:
    role = await role_by_name(db, RoleName.TRUST_ADMIN)
    rows = await db.scalars(
        select(User)
        .join(UserRole, UserRole.user_id == User.id)
        .where(UserRole.trust_id == trust_id, UserRole.role_id == role.id)
        .order_by(User.email)
    )
    return list(rows.all())


async def managed_trust_ids(db: AsyncSession, trust_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these trusts have at least one Trust Admin (one query for any number of trusts)."""
    if not trust_ids:
        return set()
    role = await role_by_name(db, RoleName.TRUST_ADMIN)
    rows = await db.scalars(
        select(UserRole.trust_id).where(UserRole.role_id == role.id, UserRole.trust_id.in_(trust_ids)).distinct()
    )
    return {tid for tid in rows.all() if tid is not None}


class TrustStatus(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    NEVER_SEEN = "never_seen"


# Agents heartbeat every 30 s and every lease (at least every 25 s) also proves liveness.
HEARTBEAT_TIMEOUT = timedelta(seconds=75)


def trust_status(trust: Trust, now: datetime | None = None) -> TrustStatus:
    """Online if the trust was heard from within the timeout; degraded if it reports a service down or slow."""
    if trust.last_heartbeat is None:
        return TrustStatus.NEVER_SEEN
    now = now or datetime.now(UTC)
    if now - trust.last_heartbeat > HEARTBEAT_TIMEOUT:
        return TrustStatus.OFFLINE
    services = (trust.services_health or {}).get("services", {})
    if isinstance(services, dict) and any(
        # "unknown" means not configured or not yet probed: it says nothing bad about the trust.
        isinstance(s, dict) and s.get("state") in ("down", "degraded")
        for s in services.values()
    ):
        return TrustStatus.DEGRADED
    return TrustStatus.ONLINE


async def has_trust_admins(db: AsyncSession, trust_id: uuid.UUID) -> bool:
    """Whether decisions for this trust are the site's (True) or the hub admin's (False)."""
    return bool(await trust_admins(db, trust_id))


async def remove_trust_admin(db: AsyncSession, actor: Actor, trust: Trust, user_id: uuid.UUID) -> None:
    """Remove a Trust Admin; refuses to remove the last one (decisions would silently move to the hub)."""
    role = await role_by_name(db, RoleName.TRUST_ADMIN)
    # Lock this trust's admin grants so two concurrent removals cannot both pass the "not last" check.
    grants = (
        await db.scalars(
            select(UserRole)
            .where(UserRole.trust_id == trust.id, UserRole.role_id == role.id)
            .options(lazyload(UserRole.role))
            .with_for_update()
        )
    ).all()
    target = next((g for g in grants if g.user_id == user_id), None)
    if target is None:
        raise NotFound("that user is not a Trust Admin of this trust", code="not_trust_admin")
    if len(grants) == 1:
        raise Conflict("cannot remove the last Trust Admin; appoint another first", code="last_trust_admin")
    await db.delete(target)
    await db.flush()
    await audit.record(db, actor, "trust.admin_removed", "trust", trust.id, {"user_id": str(user_id)})
