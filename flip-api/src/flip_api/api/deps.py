"""Dependency aliases so that route signatures read like sentences."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.config import HubSettings
from flip_api.core.errors import ApiError, Forbidden, NotAuthenticated
from flip_api.core.permissions import Perm
from flip_api.core.state import HubState
from flip_api.db.models import Trust
from flip_api.services.rbac import Principal, load_principal
from flip_core.contract import PROTOCOL_HEADER, PROTOCOL_VERSION, TRUST_KEY_HEADER, protocol_major
from flip_core.keys import hash_key, key_matches


def get_hub(request: Request) -> HubState:
    hub: HubState = request.app.state.hub
    return hub


HubDep = Annotated[HubState, Depends(get_hub)]


def get_settings(hub: HubDep) -> HubSettings:
    return hub.settings


SettingsDep = Annotated[HubSettings, Depends(get_settings)]


async def get_db(hub: HubDep) -> AsyncIterator[AsyncSession]:
    """One session per request; handlers commit explicitly, anything uncommitted is rolled back."""
    async with hub.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False, description="Access token from /api/auth/login")


async def get_principal(
    hub: HubDep,
    db: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The signed-in user; 401 unless the token is valid, its session live and the user enabled."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise NotAuthenticated("sign in first: missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    identity = await hub.identity.verify(db, creds.credentials)
    return await load_principal(db, identity.user, identity.session_id)


CurrentUser = Annotated[Principal, Depends(get_principal)]


def require(perm: Perm) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """Dependency factory: the caller must hold the global permission ``perm``."""

    async def _check(user: CurrentUser) -> Principal:
        if not user.has(perm):
            raise Forbidden(f"this action needs the {perm.value} permission")
        return user

    return _check


AdminUsers = Annotated[Principal, Depends(require(Perm.MANAGE_USERS))]
AdminTrusts = Annotated[Principal, Depends(require(Perm.MANAGE_TRUSTS))]
AuditReader = Annotated[Principal, Depends(require(Perm.VIEW_AUDIT))]

_trust_key = APIKeyHeader(name=TRUST_KEY_HEADER, auto_error=False, description="Per-trust API key")


async def get_trust(db: SessionDep, key: Annotated[str | None, Depends(_trust_key)]) -> Trust:
    """The trust a machine request comes from; the key is the identity (no name in the URL)."""
    if not key:
        raise NotAuthenticated(f"missing {TRUST_KEY_HEADER} header", code="missing_trust_key")
    digest = hash_key(key)
    trust = await db.scalar(select(Trust).where(Trust.api_key_hash == digest))
    if trust is None or not key_matches(key, trust.api_key_hash):
        raise NotAuthenticated("trust key not recognised", code="invalid_trust_key")
    return trust


CurrentTrust = Annotated[Trust, Depends(get_trust)]


async def get_machine_trust(
    trust: CurrentTrust,
    version: Annotated[str | None, Header(alias=PROTOCOL_HEADER, description="hub<->trust protocol version")] = None,
) -> Trust:
    """An authenticated trust speaking a protocol this hub understands (unknown major → 400)."""
    if not version:
        raise ApiError(
            f"send the {PROTOCOL_HEADER} header (this hub speaks {PROTOCOL_VERSION})", code="protocol_required"
        )
    try:
        major = protocol_major(version)
    except ValueError as exc:
        raise ApiError(f"malformed {PROTOCOL_HEADER} {version!r}", code="protocol_malformed") from exc
    if major != protocol_major(PROTOCOL_VERSION):
        raise ApiError(
            f"protocol {version} is not supported: this hub speaks {PROTOCOL_VERSION}; upgrade the trust agent",
            code="protocol_unsupported",
        )
    return trust


MachineTrust = Annotated[Trust, Depends(get_machine_trust)]


class PageParams:
    def __init__(
        self,
        page: Annotated[int, Query(ge=1, le=100_000, description="1-based page number")] = 1,
        page_size: Annotated[int, Query(ge=1, le=200, description="items per page")] = 50,
    ) -> None:
        self.page = page
        self.page_size = page_size

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


PageDep = Annotated[PageParams, Depends()]
