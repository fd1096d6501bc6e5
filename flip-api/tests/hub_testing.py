"""Types shared by the hub's tests (importable from test modules; conftest provides the fixtures)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import Trust, User
from flip_api.db.session import transaction
from flip_api.services import auth as auth_service
from flip_api.services import users as users_service
from flip_api.services.audit import Actor


@dataclass
class TestUser:
    user: User
    password: str
    headers: dict[str, str]

    @property
    def id(self) -> uuid.UUID:
        return self.user.id


MakeUser = Callable[..., Awaitable[TestUser]]


@dataclass(frozen=True)
class RouteInfo:
    method: str
    path: str
    dependant: Dependant


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every (method, path) the app serves through an APIRoute, with its dependency tree.

    FastAPI 0.138 keeps included routers as nested, lazily resolved entries; ``iter_route_contexts``
    flattens them to what is really served (prefix applied).
    """
    out = []
    for ctx in iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute) and ctx.path is not None:
            for method in sorted(ctx.methods or ()):
                out.append(RouteInfo(method, ctx.path, ctx.dependant))
    return out


def framework_paths(app: FastAPI) -> set[str]:
    """Paths served by routes that are not APIRoutes (OpenAPI schema, docs)."""
    return {
        ctx.path
        for ctx in iter_route_contexts(app.routes)
        if not isinstance(ctx.original_route, APIRoute) and ctx.path is not None
    }


def make_user_factory(hub: HubState) -> MakeUser:
    """Create a user with global roles (and optional Trust Admin grants) and a signed-in session."""

    async def _make(
        *roles: RoleName,
        email: str | None = None,
        trust_admin_of: list[Trust] | None = None,
        name: str = "Test User",
    ) -> TestUser:
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.org"
        password = "correct-horse-" + uuid.uuid4().hex[:8]
        async with transaction(hub.sessions) as session:
            user, _ = await users_service.create_user(
                session, Actor.system("test"), email=email, name=name, roles=list(roles), password=password
            )
            for trust in trust_admin_of or []:
                await users_service.grant_trust_role(session, Actor.system("test"), user, trust)
            tokens = await auth_service.start_session(session, hub, user)
        return TestUser(user, password, {"Authorization": f"Bearer {tokens.access_token}"})

    return _make
