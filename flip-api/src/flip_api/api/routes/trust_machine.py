"""Machine routes called by trust agents: authenticated by the trust's API key, versioned by header.

Nothing here is reachable with a user token, and nothing here connects to a trust: the trust calls
in (outbound from its side), leases work, and posts results.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select, update

from flip_api.api.deps import HubDep, MachineTrust, SessionDep
from flip_api.core.errors import Unprocessable
from flip_api.db.models import FlBackend, FlNet, NetStatus, Trust
from flip_api.schemas.fl import NodeKeyIn, NodeKeyOut, TrustNetOut
from flip_api.services import audit, tasks
from flip_api.services.audit import Actor
from flip_core.contract import TrustIdentity
from flip_core.tasks import (
    MAX_LEASE_WAIT_S,
    Heartbeat,
    HeartbeatAck,
    LeaseExtended,
    LeaseExtension,
    LeaseRequest,
    LeaseResponse,
    TaskResult,
    TaskResultAck,
)

router = APIRouter(prefix="/trust", tags=["trust machine"])

LIVENESS_STAMP_INTERVAL = timedelta(seconds=10)


def _rate_limit(hub: HubDep, trust: Trust) -> None:
    hub.limiter.check("trust", str(trust.id), hub.settings.rate_limit_trust_per_min)


@router.get("/whoami", response_model=TrustIdentity)
async def whoami(trust: MachineTrust) -> TrustIdentity:
    """The trust this key belongs to; the agent compares it with its kit and exits on mismatch."""
    return TrustIdentity(trust_id=trust.id, code=trust.code, name=trust.name)


@router.post("/heartbeat", response_model=HeartbeatAck)
async def heartbeat(body: Heartbeat, trust: MachineTrust, hub: HubDep, db: SessionDep) -> HeartbeatAck:
    """Liveness and the trust's latest service-health snapshot (stamped with the hub's clock)."""
    _rate_limit(hub, trust)
    now = datetime.now(UTC)
    trust.last_heartbeat = now
    trust.services_health = {**body.model_dump(mode="json"), "received_at": now.isoformat()}
    await db.commit()
    return HeartbeatAck(trust_id=trust.id, server_time=now)


@router.post("/tasks/lease", response_model=LeaseResponse)
async def lease(
    body: LeaseRequest,
    trust: MachineTrust,
    hub: HubDep,
    db: SessionDep,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_LEASE_WAIT_S, description="seconds to wait for work")] = 0,
) -> LeaseResponse:
    """Lease ready tasks; with ``wait`` the request is held until work arrives or the wait ends."""
    _rate_limit(hub, trust)
    trust_id = trust.id
    # A lease is proof of life too, so agents need no frequent heartbeat; a stamp a few seconds old is
    # fresh enough and skipping the write keeps fast pollers cheap.
    stamp = trust.last_heartbeat is None or datetime.now(UTC) - trust.last_heartbeat > LIVENESS_STAMP_INTERVAL
    # Never hold a database connection while waiting: thousands of trusts may be parked here.
    await db.close()
    deadline = time.monotonic() + wait
    gone = asyncio.create_task(_client_gone(request), name="lease-disconnect")
    try:
        with hub.notifier.subscription(trust_id) as woken:
            while True:
                woken.clear()
                async with hub.sessions() as session, session.begin():
                    if stamp:
                        await session.execute(
                            update(Trust).where(Trust.id == trust_id).values(last_heartbeat=datetime.now(UTC))
                        )
                        stamp = False
                    leased = await tasks.lease_tasks(
                        session, trust_id, max_tasks=body.max_tasks, lease_s=body.lease_s, types=body.types
                    )
                remaining = deadline - time.monotonic()
                if leased or remaining <= 0:
                    return LeaseResponse(trust_id=trust_id, tasks=leased, server_time=datetime.now(UTC))
                wake = asyncio.create_task(woken.wait())
                try:
                    await asyncio.wait({wake, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
                if gone.done() or not wake.done():
                    # The agent hung up (nothing may be leased to nobody) or the wait ran out.
                    return LeaseResponse(trust_id=trust_id, tasks=[], server_time=datetime.now(UTC))
    finally:
        gone.cancel()


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body is already read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


@router.post("/tasks/{task_id}/extend", response_model=LeaseExtended)
async def extend(
    task_id: uuid.UUID, body: LeaseExtension, trust: MachineTrust, hub: HubDep, db: SessionDep
) -> LeaseExtended:
    """Keep a lease on long-running work; 409 ``stale_lease`` if it was lost."""
    _rate_limit(hub, trust)
    task = await tasks.extend_lease(db, trust.id, task_id, body.lease_token, body.extend_s)
    await db.commit()
    assert task.lease_expires_at is not None
    return LeaseExtended(task_id=task.id, lease_expires_at=task.lease_expires_at)


@router.post("/tasks/{task_id}/result", response_model=TaskResultAck)
async def result(
    task_id: uuid.UUID, body: TaskResult, trust: MachineTrust, hub: HubDep, db: SessionDep
) -> TaskResultAck:
    """Post a task's outcome with its lease token; repeating the same post is harmless."""
    _rate_limit(hub, trust)
    posted = await tasks.post_result(db, trust.id, task_id, body)
    await db.commit()
    return TaskResultAck(task_id=posted.task.id, status=posted.task.status, duplicate=posted.duplicate)


@router.put("/fl/node-key", response_model=NodeKeyOut)
async def put_node_key(body: NodeKeyIn, trust: MachineTrust, hub: HubDep, db: SessionDep) -> NodeKeyOut:
    """The public key of the trust's FL client (Flower SuperNode); the worker registers it on every Flower
    net under the trust's code. Sending the same key again changes nothing."""
    _rate_limit(hub, trust)
    key = body.public_key.strip()
    if not key.startswith("ecdsa-sha2-nistp") or len(key.splitlines()) != 1:
        raise Unprocessable("public_key must be one OpenSSH ECDSA public key line", code="invalid_key")
    changed = trust.fl_node_key != key
    if changed:
        trust.fl_node_key = key
        await audit.record(db, Actor.trust(trust.id), "trust.fl_node_key_set", "trust", trust.id, {})
    await db.commit()
    return NodeKeyOut(trust_id=trust.id, changed=changed)


@router.get("/fl/nets", response_model=list[TrustNetOut])
async def list_fl_nets(trust: MachineTrust, hub: HubDep, db: SessionDep) -> list[TrustNetOut]:
    """The Flower nets the trust's SuperNodes should dial (enabled nets that reported their address)."""
    _rate_limit(hub, trust)
    rows = await db.scalars(
        select(FlNet)
        .where(FlNet.backend == FlBackend.FLOWER, FlNet.status != NetStatus.DISABLED, FlNet.fleet_address.is_not(None))
        .order_by(FlNet.name)
    )
    return [
        TrustNetOut(name=n.name, backend=n.backend, fleet_address=n.fleet_address or "", ca_cert=n.ca_cert or "")
        for n in rows.all()
    ]
