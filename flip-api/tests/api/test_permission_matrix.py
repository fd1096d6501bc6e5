"""Route × role matrix: every route, called by every kind of caller, is allowed or refused as designed.

Each row arranges a fresh world (new users, trusts and projects in the test's database), builds a
request that is valid for that world, and checks every caller: allowed callers must succeed (2xx),
refused callers must get 401/403/404 (404 where the hub hides a resource's existence).  A
state-changing request is retried on a freshly arranged world for each allowed caller, so the
first success never masks the next caller's result.  Every API route must appear here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import httpx
import pytest
from fastapi import FastAPI
from hub_testing import COHORT_SQL, MakeUser, api_routes, ready_cohort, register_test_trust
from sqlalchemy import select

from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.models import AccessRequest
from flip_api.db.session import transaction
from flip_api.services.tasks import enqueue_task
from flip_core.tasks import TaskType


class Caller(StrEnum):
    ANON = "anonymous"
    VIEWER = "viewer (member of the project)"
    OWNER = "researcher (owner of the project)"
    OUTSIDER = "researcher (not a member)"
    TRUST_ADMIN = "trust admin (of trust 1)"
    ADMIN = "hub admin"
    TRUST_KEY = "trust 1 API key"


SIGNED_IN = {Caller.VIEWER, Caller.OWNER, Caller.OUTSIDER, Caller.TRUST_ADMIN, Caller.ADMIN}


@dataclass
class World:
    headers: dict[Caller, dict[str, str]]
    passwords: dict[Caller, str]
    trust1: uuid.UUID  # has Trust Admins (decides as SITE)
    trust2: uuid.UUID  # has none (the hub admin decides)
    unstaged: uuid.UUID  # owned by OWNER, VIEWER is a member
    staged: uuid.UUID  # owned by OWNER, VIEWER is a member, staged at trust1 + trust2
    member: uuid.UUID  # VIEWER's user id
    co_admin: uuid.UUID  # a second Trust Admin of trust1
    spare_user: uuid.UUID
    spare_email: str
    access_request: uuid.UUID
    task: uuid.UUID  # a task of trust1, leased by trust1's agent
    lease_token: str
    imaging: uuid.UUID | None = None  # owned by OWNER, VIEWER a member, approved at trust1 (only when asked for)
    model: uuid.UUID | None = None  # a model of the imaging project, with one clean file
    model_file: uuid.UUID | None = None
    job: uuid.UUID | None = None  # the model's queued training job (only when asked for)


async def arrange(
    hub: HubState, client: httpx.AsyncClient, make_user: MakeUser, *, imaging: bool = False, queued: bool = False
) -> World:
    tag = uuid.uuid4().hex[:6].upper()
    t1, t2 = [await register_test_trust(hub, f"T{i}{tag}", name=f"T{i} {tag}") for i in (1, 2)]
    viewer = await make_user(RoleName.VIEWER)
    owner = await make_user(RoleName.RESEARCHER)
    outsider = await make_user(RoleName.RESEARCHER)
    trust_admin = await make_user(trust_admin_of=[t1])
    co_admin = await make_user(trust_admin_of=[t1])
    admin = await make_user(RoleName.ADMIN)
    spare = await make_user(RoleName.VIEWER)
    headers = {
        Caller.ANON: {},
        Caller.VIEWER: viewer.headers,
        Caller.OWNER: owner.headers,
        Caller.OUTSIDER: outsider.headers,
        Caller.TRUST_ADMIN: trust_admin.headers,
        Caller.ADMIN: admin.headers,
        Caller.TRUST_KEY: t1.headers,
    }
    passwords = {
        Caller.VIEWER: viewer.password,
        Caller.OWNER: owner.password,
        Caller.OUTSIDER: outsider.password,
        Caller.TRUST_ADMIN: trust_admin.password,
        Caller.ADMIN: admin.password,
    }
    ids = []
    for suffix in ("unstaged", "staged"):
        r = await client.post(
            "/api/projects",
            headers=owner.headers,
            json={"name": f"{suffix} {tag}", "has_imaging": False, "member_ids": [str(viewer.id)]},
        )
        assert r.status_code == 201, r.text
        ids.append(uuid.UUID(r.json()["id"]))
    # Both projects' queries were answered: the unstaged one at trust1 (stageable there), the staged one at both.
    await ready_cohort(client, owner.headers, ids[0], t1)
    await ready_cohort(client, owner.headers, ids[1], t1, t2)
    r = await client.post(
        f"/api/projects/{ids[1]}/stage", headers=owner.headers, json={"trust_ids": [str(t1.id), str(t2.id)]}
    )
    assert r.status_code == 200, r.text
    email = f"applicant-{tag.lower()}@example.org"
    r = await client.post("/api/access-requests", json={"email": email, "name": "Applicant", "reason": "study"})
    assert r.status_code == 202
    async with hub.sessions() as s:
        request_id = await s.scalar(select(AccessRequest.id).where(AccessRequest.email == email))
    assert request_id is not None
    imaging_project = model = model_file = job = None
    if imaging:
        # An imaging project approved at trust1 by its Trust Admin (an approval queues work at trust1, so
        # this comes before the ping below is leased).
        r = await client.post(
            "/api/projects",
            headers=owner.headers,
            json={"name": f"imaging {tag}", "has_imaging": True, "member_ids": [str(viewer.id)]},
        )
        assert r.status_code == 201, r.text
        imaging_project = uuid.UUID(r.json()["id"])
        await ready_cohort(client, owner.headers, imaging_project, t1)
        r = await client.post(
            f"/api/projects/{imaging_project}/stage", headers=owner.headers, json={"trust_ids": [str(t1.id)]}
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            f"/api/projects/{imaging_project}/trusts/{t1.id}/decision",
            headers=trust_admin.headers,
            json={"decision": "APPROVED"},
        )
        assert r.status_code == 200, r.text
        r = await client.post(f"/api/projects/{imaging_project}/models", headers=owner.headers, json={"name": "m"})
        assert r.status_code == 201, r.text
        model = uuid.UUID(r.json()["id"])
        for name, data in (("client_app.py", b"def train(m, c):\n    return {}\n"), ("models.py", b"M = 1\n")):
            r = await client.put(f"/api/models/{model}/files/{name}", headers=owner.headers, content=data)
            assert r.status_code == 201, r.text
        r = await client.put(f"/api/models/{model}/files/config.json", headers=owner.headers, content=b"{}")
        assert r.status_code == 201, r.text
        model_file = uuid.UUID(r.json()["id"])
        if queued:  # a training job waiting in the queue
            r = await client.post(f"/api/models/{model}/jobs", headers=owner.headers, json={})
            assert r.status_code == 201, r.text
            job = uuid.UUID(r.json()["id"])
    async with transaction(hub.sessions) as s:
        task = await enqueue_task(s, hub, t1.trust, TaskType.PING, {"message": "matrix"})
    r = await client.post("/api/trust/tasks/lease", headers=headers[Caller.TRUST_KEY], json={"types": ["ping"]})
    assert r.status_code == 200, r.text
    (leased,) = r.json()["tasks"]
    return World(
        headers,
        passwords,
        t1.id,
        t2.id,
        ids[0],
        ids[1],
        viewer.id,
        co_admin.id,
        spare.id,
        spare.user.email,
        request_id,
        task.id,
        leased["lease_token"],
        imaging_project,
        model,
        model_file,
        job,
    )


Request = tuple[str, str, dict[str, object] | bytes | None]


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    build: Callable[[World, Caller], Request]
    allowed: frozenset[Caller]
    label: str = ""
    imaging: bool = False  # the world needs the approved imaging project
    queued: bool = False  # ... and its model's training queued
    # What an allowed caller gets: 2xx, or (for routes whose success needs something the test hub lacks) the
    # refusal that comes only after authorisation passed.
    accepted: frozenset[int] = frozenset(range(200, 300))


def row(
    method: str,
    path: str,
    allowed: set[Caller],
    build: Callable[[World, Caller], Request] | None = None,
    label: str = "",
    *,
    imaging: bool = False,
    accepted: frozenset[int] = frozenset(range(200, 300)),
    queued: bool = False,
) -> Row:
    build = build or (lambda w, c: (method, path, None))
    return Row(method, path, build, frozenset(allowed), label, imaging or queued, queued, accepted)


ADMIN_ONLY = {Caller.ADMIN}
P = "/api/projects/{project_id}"
M = "/api/models/{model_id}"
# Who may read a project (and its models): members, the owner, project managers, its trusts' Trust Admins.
READERS = {Caller.VIEWER, Caller.OWNER, Caller.ADMIN, Caller.TRUST_ADMIN}

MATRIX: list[Row] = [
    # auth
    row("POST", "/api/auth/logout", SIGNED_IN),
    # users
    row("GET", "/api/users/me", SIGNED_IN),
    row(
        "POST",
        "/api/users/me/password",
        SIGNED_IN,
        lambda w, c: (
            "POST",
            "/api/users/me/password",
            {"current_password": w.passwords.get(c, "x"), "new_password": "another-long-password"},
        ),
    ),
    row("PATCH", "/api/users/me", SIGNED_IN, lambda w, c: ("PATCH", "/api/users/me", {"organisation": "GSTT"})),
    row("GET", "/api/users/lookup", SIGNED_IN, lambda w, c: ("GET", f"/api/users/lookup?email={w.spare_email}", None)),
    row("GET", "/api/users", ADMIN_ONLY),
    row(
        "POST",
        "/api/users",
        ADMIN_ONLY,
        lambda w, c: ("POST", "/api/users", {"email": f"{uuid.uuid4().hex[:8]}@example.org", "name": "N"}),
    ),
    row("GET", "/api/users/{user_id}", ADMIN_ONLY, lambda w, c: ("GET", f"/api/users/{w.spare_user}", None)),
    row(
        "PATCH",
        "/api/users/{user_id}",
        ADMIN_ONLY,
        lambda w, c: ("PATCH", f"/api/users/{w.spare_user}", {"organisation": "KCL"}),
    ),
    row(
        "PUT",
        "/api/users/{user_id}/roles",
        ADMIN_ONLY,
        lambda w, c: ("PUT", f"/api/users/{w.spare_user}/roles", {"roles": ["Researcher"]}),
    ),
    row(
        "POST",
        "/api/users/{user_id}/mfa/reset",
        ADMIN_ONLY,
        lambda w, c: ("POST", f"/api/users/{w.spare_user}/mfa/reset", None),
    ),
    row(
        "POST",
        "/api/users/{user_id}/sessions/revoke",
        ADMIN_ONLY,
        lambda w, c: ("POST", f"/api/users/{w.spare_user}/sessions/revoke", None),
    ),
    row("GET", "/api/roles", SIGNED_IN),
    # access requests
    row("GET", "/api/access-requests", ADMIN_ONLY),
    row(
        "POST",
        "/api/access-requests/{request_id}/enrol",
        ADMIN_ONLY,
        lambda w, c: ("POST", f"/api/access-requests/{w.access_request}/enrol", {"roles": ["Viewer"]}),
    ),
    row(
        "POST",
        "/api/access-requests/{request_id}/dismiss",
        ADMIN_ONLY,
        lambda w, c: ("POST", f"/api/access-requests/{w.access_request}/dismiss", None),
    ),
    # trusts
    row("GET", "/api/trusts", SIGNED_IN),
    row("GET", "/api/trusts/{trust_id}", SIGNED_IN, lambda w, c: ("GET", f"/api/trusts/{w.trust1}", None)),
    row(
        "POST",
        "/api/trusts",
        ADMIN_ONLY,
        lambda w, c: ("POST", "/api/trusts", {"name": f"New {uuid.uuid4().hex[:6]}", "code": uuid.uuid4().hex[:8]}),
    ),
    row(
        "POST",
        "/api/trusts/{trust_id}/rotate-keys",
        ADMIN_ONLY,
        lambda w, c: ("POST", f"/api/trusts/{w.trust1}/rotate-keys", None),
    ),
    row(
        "GET", "/api/trusts/{trust_id}/admins", SIGNED_IN, lambda w, c: ("GET", f"/api/trusts/{w.trust1}/admins", None)
    ),
    row(
        "POST",
        "/api/trusts/{trust_id}/admins",
        {Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("POST", f"/api/trusts/{w.trust1}/admins", {"user_id": str(w.spare_user)}),
    ),
    row(
        "DELETE",
        "/api/trusts/{trust_id}/admins/{user_id}",
        {Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("DELETE", f"/api/trusts/{w.trust1}/admins/{w.co_admin}", None),
    ),
    row(
        "GET",
        "/api/trusts/{trust_id}/decisions",
        {Caller.TRUST_ADMIN},
        lambda w, c: ("GET", f"/api/trusts/{w.trust1}/decisions", None),
        "trust with Trust Admins",
    ),
    row(
        "GET",
        "/api/trusts/{trust_id}/decisions",
        ADMIN_ONLY,
        lambda w, c: ("GET", f"/api/trusts/{w.trust2}/decisions", None),
        "trust without Trust Admins",
    ),
    row("GET", "/api/trusts/{trust_id}/tasks", SIGNED_IN, lambda w, c: ("GET", f"/api/trusts/{w.trust1}/tasks", None)),
    row(
        "GET",
        "/api/trusts/{trust_id}/tasks/{task_id}",
        ADMIN_ONLY,
        lambda w, c: ("GET", f"/api/trusts/{w.trust1}/tasks/{w.task}", None),
    ),
    row(
        "POST",
        "/api/trusts/{trust_id}/ping",
        ADMIN_ONLY,
        lambda w, c: ("POST", f"/api/trusts/{w.trust1}/ping", {"message": "hi"}),
    ),
    # trust machine routes
    row("GET", "/api/trust/whoami", {Caller.TRUST_KEY}),
    row(
        "POST",
        "/api/trust/heartbeat",
        {Caller.TRUST_KEY},
        lambda w, c: (
            "POST",
            "/api/trust/heartbeat",
            {"agent_version": "t", "started_at": "2026-11-23T12:00:00Z", "services": {}},
        ),
    ),
    row("POST", "/api/trust/tasks/lease", {Caller.TRUST_KEY}, lambda w, c: ("POST", "/api/trust/tasks/lease", {})),
    row(
        "POST",
        "/api/trust/tasks/{task_id}/extend",
        {Caller.TRUST_KEY},
        lambda w, c: ("POST", f"/api/trust/tasks/{w.task}/extend", {"lease_token": w.lease_token}),
    ),
    row(
        "POST",
        "/api/trust/tasks/{task_id}/result",
        {Caller.TRUST_KEY},
        lambda w, c: (
            "POST",
            f"/api/trust/tasks/{w.task}/result",
            {"lease_token": w.lease_token, "outcome": "completed", "result": {}},
        ),
    ),
    # projects
    row("GET", "/api/projects", SIGNED_IN),
    row(
        "POST",
        "/api/projects",
        {Caller.OWNER, Caller.OUTSIDER, Caller.ADMIN},
        lambda w, c: ("POST", "/api/projects", {"name": f"P {uuid.uuid4().hex[:8]}", "has_imaging": False}),
    ),
    row(
        "GET",
        P,
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.unstaged}", None),
        "unstaged",
    ),
    row(
        "GET",
        P,
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.staged}", None),
        "staged at the trust admin's trust",
    ),
    row(
        "PATCH",
        P,
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("PATCH", f"/api/projects/{w.unstaged}", {"description": "edited"}),
    ),
    row("DELETE", P, {Caller.OWNER, Caller.ADMIN}, lambda w, c: ("DELETE", f"/api/projects/{w.unstaged}", None)),
    row(
        "GET",
        P + "/members",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.unstaged}/members", None),
    ),
    row(
        "POST",
        P + "/members",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/projects/{w.unstaged}/members", {"user_id": str(w.spare_user)}),
    ),
    row(
        "DELETE",
        P + "/members/{user_id}",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("DELETE", f"/api/projects/{w.unstaged}/members/{w.member}", None),
    ),
    row(
        "POST",
        P + "/stage",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/projects/{w.unstaged}/stage", {"trust_ids": [str(w.trust1)]}),
    ),
    row("POST", P + "/unstage", ADMIN_ONLY, lambda w, c: ("POST", f"/api/projects/{w.staged}/unstage", None)),
    # cohorts
    row(
        "PUT",
        P + "/query",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("PUT", f"/api/projects/{w.unstaged}/query", {"sql": COHORT_SQL + " AND person_id > 7"}),
    ),
    row(
        "GET",
        P + "/query",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.unstaged}/query", None),
        "unstaged",
    ),
    row(
        "GET",
        P + "/query",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.staged}/query", None),
        "staged at the trust admin's trust",
    ),
    row(
        "POST",
        P + "/query/precheck",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/projects/{w.unstaged}/query/precheck", {"sql": COHORT_SQL}),
    ),
    row(
        "POST",
        P + "/query/submit",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/projects/{w.unstaged}/query/submit", None),
    ),
    row(
        "GET",
        P + "/query/results",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.unstaged}/query/results", None),
        "unstaged",
    ),
    row(
        "GET",
        P + "/query/results",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.staged}/query/results", None),
        "staged at the trust admin's trust",
    ),
    row(
        "GET",
        P + "/snapshots",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.staged}/snapshots", None),
    ),
    row(
        "GET",
        P + "/trusts",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.staged}/trusts", None),
    ),
    row(
        "POST",
        P + "/trusts/{trust_id}/decision",
        {Caller.TRUST_ADMIN},
        lambda w, c: ("POST", f"/api/projects/{w.staged}/trusts/{w.trust1}/decision", {"decision": "APPROVED"}),
        "trust with Trust Admins: only they decide",
    ),
    row(
        "POST",
        P + "/trusts/{trust_id}/decision",
        ADMIN_ONLY,
        lambda w, c: ("POST", f"/api/projects/{w.staged}/trusts/{w.trust2}/decision", {"decision": "DECLINED"}),
        "trust without Trust Admins: the hub admin decides",
    ),
    # imaging
    row(
        "GET",
        P + "/imaging",
        {Caller.VIEWER, Caller.OWNER, Caller.ADMIN, Caller.TRUST_ADMIN},
        lambda w, c: ("GET", f"/api/projects/{w.imaging}/imaging", None),
        imaging=True,
    ),
    row(
        "POST",
        P + "/imaging/reimport",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/projects/{w.imaging}/imaging/reimport", None),
        imaging=True,
    ),
    row(
        "DELETE",
        P + "/imaging",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("DELETE", f"/api/projects/{w.imaging}/imaging", None),
        imaging=True,
    ),
    # models and their files (in the approved imaging project)
    row("GET", "/api/job-types", SIGNED_IN),
    row(
        "POST",
        P + "/models",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/projects/{w.imaging}/models", {"name": f"model {c.name}"}),
        imaging=True,
    ),
    row(
        "GET",
        P + "/models",
        READERS,
        lambda w, c: ("GET", f"/api/projects/{w.imaging}/models", None),
        imaging=True,
    ),
    row("GET", M, READERS, lambda w, c: ("GET", f"/api/models/{w.model}", None), imaging=True),
    row(
        "PATCH",
        M,
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("PATCH", f"/api/models/{w.model}", {"description": "changed"}),
        imaging=True,
    ),
    row(
        "DELETE", M, {Caller.OWNER, Caller.ADMIN}, lambda w, c: ("DELETE", f"/api/models/{w.model}", None), imaging=True
    ),
    row("GET", M + "/files", READERS, lambda w, c: ("GET", f"/api/models/{w.model}/files", None), imaging=True),
    row(
        "PUT",
        M + "/files/{name}",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("PUT", f"/api/models/{w.model}/files/models.py", b"import torch\n"),
        imaging=True,
    ),
    row(
        "POST",
        M + "/uploads",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/models/{w.model}/uploads", {"name": "models.py", "size": 10}),
        "the test hub's local store offers no presigned uploads: 409 once authorised",
        imaging=True,
        accepted=frozenset({409}),
    ),
    row(
        "POST",
        M + "/files/{file_id}/complete",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/models/{w.model}/files/{w.model_file}/complete", None),
        "the file is not waiting for an upload: 409 once authorised",
        imaging=True,
        accepted=frozenset({409}),
    ),
    row(
        "GET",
        M + "/files/{file_id}/content",
        READERS,
        lambda w, c: ("GET", f"/api/models/{w.model}/files/{w.model_file}/content", None),
        imaging=True,
    ),
    row(
        "DELETE",
        M + "/files/{file_id}",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("DELETE", f"/api/models/{w.model}/files/{w.model_file}", None),
        imaging=True,
    ),
    row(
        "POST",
        M + "/jobs",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/models/{w.model}/jobs", {"config": {"rounds": 2}}),
        imaging=True,
    ),
    row("GET", M + "/jobs", READERS, lambda w, c: ("GET", f"/api/models/{w.model}/jobs", None), queued=True),
    row(
        "GET",
        M + "/jobs/{job_id}",
        READERS,
        lambda w, c: ("GET", f"/api/models/{w.model}/jobs/{w.job}", None),
        queued=True,
    ),
    row(
        "GET",
        M + "/jobs/{job_id}/results/{name}",
        READERS,
        lambda w, c: ("GET", f"/api/models/{w.model}/jobs/{w.job}/results/model.pt", None),
        queued=True,
        accepted=frozenset({404}),  # a queued job has no results yet: refused only after authorisation
    ),
    row(
        "POST",
        M + "/stop",
        {Caller.OWNER, Caller.ADMIN},
        lambda w, c: ("POST", f"/api/models/{w.model}/stop", None),
        queued=True,
    ),
    # audit
    row("GET", "/api/audit", ADMIN_ONLY),
    row("GET", "/api/audit/export", ADMIN_ONLY, lambda w, c: ("GET", "/api/audit/export?format=csv", None)),
    row("GET", "/api/audit/verify", ADMIN_ONLY),
    # FL nets: the admin's registry; the net's own routes take the net key, which no user or trust holds.
    row("GET", "/api/fl/nets", ADMIN_ONLY),
    row(
        "POST",
        "/api/fl/nets",
        ADMIN_ONLY,
        lambda w, c: ("POST", "/api/fl/nets", {"name": uuid.uuid4().hex[:8], "endpoint": "http://127.0.0.1:9"}),
    ),
    row(
        "PATCH",
        "/api/fl/nets/{net_id}",
        ADMIN_ONLY,
        lambda w, c: ("PATCH", f"/api/fl/nets/{uuid.uuid4()}", {"enabled": False}),
        accepted=frozenset({404}),  # no such net: refused only after authorisation
    ),
    row("POST", "/api/fl/events", set(), lambda w, c: ("POST", "/api/fl/events", b"{}")),
    row(
        "PUT",
        "/api/fl/jobs/{job_id}/results/{name}",
        set(),
        lambda w, c: ("PUT", f"/api/fl/jobs/{uuid.uuid4()}/results/model.pt", b"weights"),
    ),
    row(
        "PUT",
        "/api/trust/fl/node-key",
        {Caller.TRUST_KEY},
        lambda w, c: ("PUT", "/api/trust/fl/node-key", {"public_key": "ecdsa-sha2-nistp384 " + "A" * 120}),
    ),
    row("GET", "/api/trust/fl/nets", {Caller.TRUST_KEY}),
]

# Public routes are covered by the route inventory test; the matrix covers everything else.
PUBLIC = {
    ("GET", "/api/health"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/mfa/verify"),
    ("POST", "/api/auth/mfa/enrol"),
    ("POST", "/api/auth/mfa/enrol/confirm"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/access-requests"),
}


def test_matrix_covers_every_route(app: FastAPI) -> None:
    served = {(r.method, r.path) for r in api_routes(app)}
    covered = {(r.method, r.path) for r in MATRIX}
    assert served - PUBLIC - covered == set(), "routes missing from the permission matrix"
    assert covered - served == set(), "matrix rows for routes that do not exist"


DENIED = {401, 403, 404}


async def _send(client: httpx.AsyncClient, world: World, caller: Caller, entry: Row) -> httpx.Response:
    method, url, body = entry.build(world, caller)
    if isinstance(body, bytes):
        return await client.request(method, url, headers=world.headers[caller], content=body)
    return await client.request(method, url, headers=world.headers[caller], json=body)


@pytest.mark.parametrize("entry", MATRIX, ids=lambda r: f"{r.method} {r.path} {r.label}".strip())
async def test_route_role_matrix(entry: Row, hub: HubState, client: httpx.AsyncClient, make_user: MakeUser) -> None:
    world = await arrange(hub, client, make_user, imaging=entry.imaging, queued=entry.queued)
    failures = []
    for caller in Caller:
        if caller in entry.allowed:
            continue
        r = await _send(client, world, caller, entry)
        if r.status_code not in DENIED:
            failures.append(f"{caller}: expected refusal, got {r.status_code} {r.text[:120]}")
    for caller in sorted(entry.allowed):
        if entry.method != "GET":
            world = await arrange(hub, client, make_user, imaging=entry.imaging, queued=entry.queued)
        r = await _send(client, world, caller, entry)
        if r.status_code not in entry.accepted:
            failures.append(f"{caller}: expected success, got {r.status_code} {r.text[:160]}")
    assert not failures, "\n".join(failures)
