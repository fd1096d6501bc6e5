"""FL nets: the admin's registry, and the routes an FL net's server calls (run events, result files).

The net routes are authenticated by the net key (``X-FLIP-Internal-Key``), never by a user or trust
credential, and a net may only report on the jobs the hub gave it.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, status
from pydantic import ValidationError

from flip_api.api.deps import AdminTrusts, HubDep, SessionDep
from flip_api.core.errors import NotAuthenticated, Unprocessable
from flip_api.db.models import FlNet
from flip_api.schemas.fl import EventAck, NetCreated, NetIn, NetOut, NetPatch, ResultOut
from flip_api.services import fl_nets, fl_runs
from flip_api.services.audit import Actor
from flip_core.fl_events import INTERNAL_KEY_HEADER, parse_event

router = APIRouter(prefix="/fl", tags=["fl nets"])

MAX_EVENT_BYTES = 256 * 1024


@router.post("/nets", response_model=NetCreated, status_code=status.HTTP_201_CREATED)
async def register_net(body: NetIn, user: AdminTrusts, hub: HubDep, db: SessionDep) -> NetCreated:
    """Register an FL net by its control endpoint; the answer holds its key, shown this once."""
    net, key = await fl_nets.register_net(
        db, Actor.user(user.id), hub.data_key, name=body.name, backend=body.backend, endpoint=body.endpoint
    )
    await db.commit()
    return NetCreated(net=NetOut.of(net), key=key)


@router.get("/nets", response_model=list[NetOut])
async def list_nets(_: AdminTrusts, db: SessionDep) -> list[NetOut]:
    """Every FL net, with what it last reported and the job it runs."""
    return [NetOut.of(n) for n in await fl_nets.list_nets(db)]


@router.patch("/nets/{net_id}", response_model=NetOut)
async def update_net(net_id: uuid.UUID, body: NetPatch, user: AdminTrusts, db: SessionDep) -> NetOut:
    """Disable (no new jobs) or enable a net, or change its control endpoint."""
    net = await fl_nets.update_net(db, Actor.user(user.id), net_id, enabled=body.enabled, endpoint=body.endpoint)
    await db.commit()
    return NetOut.of(net)


async def reporting_net(
    hub: HubDep, db: SessionDep, key: Annotated[str | None, Header(alias=INTERNAL_KEY_HEADER)] = None
) -> FlNet:
    net = await fl_nets.net_for_key(db, hub.data_key, key)
    if net is None:
        raise NotAuthenticated("a valid FL net key is required", code="invalid_net_key")
    return net


ReportingNet = Annotated[FlNet, Depends(reporting_net)]


@router.post("/events", response_model=EventAck)
async def report_event(request: Request, net: ReportingNet, db: SessionDep) -> EventAck:
    """One typed run event from the net's FL server (stored once; ignored once the job has ended)."""
    raw = await request.body()
    if len(raw) > MAX_EVENT_BYTES:
        raise Unprocessable("the event is too large", code="invalid_event")
    try:
        event = parse_event(raw)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Unprocessable(f"invalid event: {where}: {first['msg']}", code="invalid_event") from exc
    stored = await fl_runs.record_event(db, net, event, raw)
    await db.commit()
    return EventAck(stored=stored)


@router.put("/jobs/{job_id}/results/{name}", response_model=ResultOut)
async def upload_result(job_id: str, name: str, request: Request, net: ReportingNet, hub: HubDep) -> ResultOut:
    """A result file of the net's job (``model.pt``, ``lineage.json``), sent before ``run_completed``."""
    row = await fl_runs.store_result(hub, net, job_id, name, request.stream())
    return ResultOut.of(row)
