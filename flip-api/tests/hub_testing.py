"""Types shared by the hub's tests (importable from test modules; conftest provides the fixtures)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from flip_api.db.models import User


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
