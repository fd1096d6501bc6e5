"""Bad input of every class gets a 4xx with the standard body and a specific code."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from hub_testing import MakeUser
from sqlalchemy import exc as sa_exc

from flip_api.core.errors import database_failure
from flip_api.core.permissions import RoleName


async def test_malformed_json_is_400(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    r = await client.post(
        "/api/users", headers={**admin.headers, "Content-Type": "application/json"}, content=b'{"email": '
    )
    assert r.status_code == 400
    assert r.json() == {"detail": "request body is not valid JSON", "code": "malformed_json"}


async def test_wrong_types_unknown_fields_and_enum_values_are_422(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(RoleName.ADMIN)
    cases = [
        {"email": 42, "name": "X"},
        {"email": "a@example.org", "name": "X", "roles": ["Overlord"]},
        {"email": "a@example.org", "name": "X", "is_admin": True},
        {"email": "a@example.org", "name": "X" * 500},
        {"email": "a@example.org", "name": "   "},
    ]
    for body in cases:
        r = await client.post("/api/users", headers=admin.headers, json=body)
        assert r.status_code == 422, body
        assert r.json()["code"] == "validation_error"
        assert isinstance(r.json()["detail"], str)
        assert r.json()["detail"]
    r = await client.get("/api/users", headers=admin.headers)
    assert r.json()["total"] == 1  # nothing half-written: only the admin exists


async def test_bad_path_and_query_parameters(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    r = await client.get("/api/users/not-a-uuid", headers=admin.headers)
    assert r.status_code == 422
    assert "user_id" in r.json()["detail"]
    r = await client.get("/api/users", headers=admin.headers, params={"page": 0})
    assert r.status_code == 422


async def test_unknown_route_and_method_use_the_error_body(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nowhere")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    r = await client.delete("/api/health")
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"


async def test_request_id_is_echoed_or_minted(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/api/health", headers={"X-Request-ID": "bad id with spaces;drop"})
    assert r.headers["x-request-id"] != "bad id with spaces"
    assert len(r.headers["x-request-id"]) == 32
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("orig", "code"),
    [
        (psycopg.OperationalError("connection refused"), "database_unavailable"),
        (psycopg.errors.AdminShutdown(), "database_unavailable"),
        (psycopg.errors.CannotConnectNow(), "database_unavailable"),
        (psycopg.errors.SerializationFailure(), "database_busy"),
        (psycopg.errors.DeadlockDetected(), "database_busy"),
        (psycopg.errors.LockNotAvailable(), "database_busy"),
    ],
)
def test_database_failures_are_told_apart(orig: Exception, code: str) -> None:
    assert database_failure(sa_exc.OperationalError("SELECT 1", {}, orig))[0] == code


def test_an_exhausted_connection_pool_is_busy_not_down() -> None:
    assert database_failure(sa_exc.TimeoutError("QueuePool limit reached"))[0] == "database_busy"
