"""Every hub route requires authentication unless it is on an explicit, justified allowlist.

Two independent checks: a static one over each route's dependency tree, and a live one that calls
every route without credentials.  A new route fails this test until it is authenticated or listed.
"""

from __future__ import annotations

import re
import uuid

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from hub_testing import api_routes, framework_paths

from flip_api.api.deps import get_principal, get_trust
from flip_api.api.routes.fl import reporting_net

# (method, path) -> why it is public.
PUBLIC_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/api/health"): "load-balancer and agent liveness probe; reveals only version",
    ("POST", "/api/auth/login"): "sign-in itself",
    ("POST", "/api/auth/mfa/verify"): "second factor; authenticated by the short-lived MFA token in the body",
    ("POST", "/api/auth/mfa/enrol"): "MFA enrolment; authenticated by the MFA token in the body",
    ("POST", "/api/auth/mfa/enrol/confirm"): "MFA enrolment; authenticated by the MFA token in the body",
    ("POST", "/api/auth/refresh"): "token refresh; authenticated by the refresh token in the body",
    ("POST", "/api/access-requests"): "the public request-access form (rate limited)",
}
# Framework routes that are not APIRoutes (OpenAPI schema, interactive docs).
PUBLIC_FRAMEWORK_PATHS = {"/api/openapi.json", "/api/docs", "/api/docs/oauth2-redirect"}

AUTH_DEPENDENCIES = {get_principal, get_trust, reporting_net}  # users; trust agents; FL nets (net key)
MIN_ROUTES = 60  # a floor: fails if a router (e.g. cohorts) drops out


def _api_routes(app: FastAPI) -> list[tuple[str, str, Dependant]]:
    return [(r.method, r.path, r.dependant) for r in api_routes(app)]


def _requires_auth(dependant: Dependant) -> bool:
    if dependant.call in AUTH_DEPENDENCIES:
        return True
    return any(_requires_auth(d) for d in dependant.dependencies)


def test_static_every_route_is_authenticated_or_allowlisted(app: FastAPI) -> None:
    routes = _api_routes(app)
    assert len(routes) >= MIN_ROUTES, f"only {len(routes)} routes: did a router drop out?"
    unauthenticated = [
        (method, path)
        for method, path, route in routes
        if not _requires_auth(route) and (method, path) not in PUBLIC_ROUTES
    ]
    assert unauthenticated == [], f"routes without authentication outside the allowlist: {unauthenticated}"
    stale = set(PUBLIC_ROUTES) - {(m, p) for m, p, _ in routes}
    assert not stale, f"allowlist names routes that no longer exist: {stale}"
    for method, path, route in routes:
        assert path.startswith("/api/"), f"{method} {path} is not under /api"
        if (method, path) in PUBLIC_ROUTES:
            assert not _requires_auth(route)
    others = framework_paths(app)
    assert others <= PUBLIC_FRAMEWORK_PATHS, f"unexpected non-API routes: {others - PUBLIC_FRAMEWORK_PATHS}"


async def test_live_every_protected_route_refuses_anonymous_callers(app: FastAPI, client: httpx.AsyncClient) -> None:
    for method, path, _ in _api_routes(app):
        if (method, path) in PUBLIC_ROUTES:
            continue
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        response = await client.request(method, url, json={})
        assert response.status_code == 401, f"{method} {path} answered {response.status_code} without credentials"
        body = response.json()
        assert set(body) == {"detail", "code"}, f"{method} {path} error body {body}"


async def test_openapi_is_published_and_complete(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert {(m, p) for m, p, _ in _api_routes(app)} == documented
