"""Types shared by the hub's tests (importable from test modules; conftest provides the fixtures)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import Trust, User
from flip_api.db.session import transaction
from flip_api.services import auth as auth_service
from flip_api.services import trusts as trusts_service
from flip_api.services import users as users_service
from flip_api.services.audit import Actor
from flip_core.cohort import (
    DEFAULT_MIN_K,
    Bucket,
    CohortQueryPayload,
    CohortStatistics,
    ColumnCounts,
    Distribution,
    GatedCount,
)
from flip_core.contract import PROTOCOL_HEADER, PROTOCOL_VERSION, TRUST_KEY_HEADER, TrustKit
from flip_core.crypto import Envelope, Keyring, decode_key
from flip_core.imaging import FailureCount, ImagingStatus, StudyFailure, StudyState
from flip_core.tasks import TaskType, payload_purpose


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
        trust_admin_of: list[Trust | RegisteredTrust] | None = None,
        name: str = "Test User",
    ) -> TestUser:
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.org"
        password = "correct-horse-" + uuid.uuid4().hex[:8]
        async with transaction(hub.sessions) as session:
            user, _ = await users_service.create_user(
                session, Actor.system("test"), email=email, name=name, roles=list(roles), password=password
            )
            for trust in trust_admin_of or []:
                row = trust.trust if isinstance(trust, RegisteredTrust) else trust
                await users_service.grant_trust_role(session, Actor.system("test"), user, row)
            tokens = await auth_service.start_session(session, hub, user)
        return TestUser(user, password, {"Authorization": f"Bearer {tokens.access_token}"})

    return _make


# --------------------------------------------------------------------------- trusts and their side of cohorts

COHORT_SQL = "SELECT person_id FROM person WHERE year_of_birth < 1990"


@dataclass
class RegisteredTrust:
    """A registered trust with its kit, so that tests can act as its agent over the machine routes."""

    trust: Trust
    kit: TrustKit

    @property
    def id(self) -> uuid.UUID:
        return self.trust.id

    @property
    def code(self) -> str:
        return self.trust.code

    @property
    def headers(self) -> dict[str, str]:
        return {TRUST_KEY_HEADER: self.kit.api_key, PROTOCOL_HEADER: PROTOCOL_VERSION}

    def open(self, task: dict[str, Any]) -> Any:
        """Open a leased task's payload with the trust's own key, as its agent would."""
        ring = Keyring({self.kit.payload_key_id: decode_key(self.kit.payload_key)}, current=self.kit.payload_key_id)
        return ring.open_json(Envelope.model_validate(task["payload"]), payload_purpose(TaskType(task["type"])))


async def register_test_trust(hub: HubState, code: str, name: str | None = None) -> RegisteredTrust:
    async with transaction(hub.sessions) as s:
        issued = await trusts_service.register_trust(
            s,
            Actor.system("test"),
            data_key=hub.data_key,
            hub_url="http://hub.test",
            name=name or f"Trust {code}",
            code=code,
        )
    return RegisteredTrust(issued.trust, issued.kit)


def gated(value: int | None) -> GatedCount:
    return GatedCount(value=value, suppressed=value is None)


def cohort_statistics(query_id: uuid.UUID, persons: int | None, *, k: int = DEFAULT_MIN_K) -> dict[str, Any]:
    """A well-formed answer to ``cohort_query``, as a trust's gate would build it (None: suppressed)."""
    stats = CohortStatistics(
        query_id=query_id,
        record_count=gated(persons),
        k=k,
        columns=[ColumnCounts(column="person_id", non_null=gated(persons), null=gated(None))],
        distributions=[
            Distribution(name="sex", buckets=[Bucket(label="Other", count=gated(persons))]),
        ],
        computed_at=datetime.now(UTC),
    )
    return stats.model_dump(mode="json")


async def lease_as(
    client: httpx.AsyncClient, trust: RegisteredTrust, *types: TaskType, max_tasks: int = 50
) -> list[dict[str, Any]]:
    """Lease ready tasks (of the given types) through the real machine route."""
    body: dict[str, Any] = {"max_tasks": max_tasks}
    if types:
        body["types"] = [t.value for t in types]
    r = await client.post("/api/trust/tasks/lease", headers=trust.headers, json=body)
    assert r.status_code == 200, r.text
    leased: list[dict[str, Any]] = r.json()["tasks"]
    return leased


async def post_result(
    client: httpx.AsyncClient,
    trust: RegisteredTrust,
    task: dict[str, Any],
    result: dict[str, Any] | None = None,
    **body: Any,
) -> httpx.Response:
    """Post a task's outcome with its lease token (completed with ``result`` unless ``body`` says otherwise)."""
    payload = {"lease_token": task["lease_token"], "outcome": "completed", "result": result, **body}
    return await client.post(f"/api/trust/tasks/{task['id']}/result", headers=trust.headers, json=payload)


async def answer_cohort_queries(client: httpx.AsyncClient, trust: RegisteredTrust, persons: int | None = 42) -> int:
    """Act as the trust: lease every waiting ``cohort_query`` and answer each with ``persons``."""
    leased = await lease_as(client, trust, TaskType.COHORT_QUERY)
    for task in leased:
        payload = CohortQueryPayload.model_validate(trust.open(task))
        r = await post_result(client, trust, task, cohort_statistics(payload.query_id, persons))
        assert r.status_code == 200, r.text
    return len(leased)


async def ready_cohort(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: object, *trusts: RegisteredTrust, persons: int = 42
) -> None:
    """Save and submit a cohort query, and have each trust answer it with a usable count (stageable there)."""
    url = f"/api/projects/{project_id}/query"
    r = await client.put(url, headers=headers, json={"name": "test cohort", "sql": COHORT_SQL})
    assert r.status_code == 200, r.text
    r = await client.post(f"{url}/submit", headers=headers)
    assert r.status_code == 202, r.text
    for trust in trusts:
        await answer_cohort_queries(client, trust, persons)


# --------------------------------------------------------------------------- the trust's side of imaging


def imaging_status(
    project_id: uuid.UUID | str,
    *,
    updated_at: datetime | None = None,
    ready: int | None = 30,
    failed: int | None = None,
    running: int | None = None,
    complete: bool = False,
    deleted: bool = False,
    k: int = DEFAULT_MIN_K,
) -> dict[str, Any]:
    """A well-formed answer to an imaging task, as a trust's gate would build it (None: suppressed)."""
    released = [n for n in (ready, failed, running) if n is not None]
    by_state = {StudyState.READY: gated(ready), StudyState.FAILED: gated(failed)}
    if not complete:
        by_state[StudyState.RETRIEVING] = gated(running)
    failures = [FailureCount(reason=StudyFailure.NOT_FOUND, count=gated(failed))] if failed is not None else []
    status = ImagingStatus(
        project_id=uuid.UUID(str(project_id)),
        k=k,
        studies=gated(sum(released) if released else None),
        by_state=by_state,
        failures=failures,
        complete=complete,
        deleted=deleted,
        updated_at=updated_at or datetime.now(UTC),
    )
    return status.model_dump(mode="json")


# --------------------------------------------------------------------------- models


async def approved_project(
    client: httpx.AsyncClient,
    owner_headers: dict[str, str],
    approver_headers: dict[str, str],
    *trusts: RegisteredTrust,
    member_ids: list[str] | None = None,
) -> str:
    """A project staged at ``trusts`` and approved at each of them by ``approver`` (a hub admin, for trusts
    with no Trust Admin); returns its id."""
    r = await client.post(
        "/api/projects",
        headers=owner_headers,
        json={"name": f"Models {uuid.uuid4().hex[:8]}", "has_imaging": False, "member_ids": member_ids or []},
    )
    assert r.status_code == 201, r.text
    project_id: str = r.json()["id"]
    await ready_cohort(client, owner_headers, project_id, *trusts)
    r = await client.post(
        f"/api/projects/{project_id}/stage", headers=owner_headers, json={"trust_ids": [str(t.id) for t in trusts]}
    )
    assert r.status_code == 200, r.text
    for trust in trusts:
        r = await client.post(
            f"/api/projects/{project_id}/trusts/{trust.id}/decision",
            headers=approver_headers,
            json={"decision": "APPROVED"},
        )
        assert r.status_code == 200, r.text
    return project_id


MALICIOUS_PICKLE_SOURCE = "os.system"


def malicious_pickle() -> bytes:
    """A pickle that would run ``os.system`` when loaded (never load it): opcodes written by hand."""
    return b"cos\nsystem\n(S'echo pwned'\ntR."
