"""FL nets: the registry (admin), the net key, and the client the hub uses to call a net's control API.

An FL net is one FL server plus its control API (``flip fl-net serve``). An admin registers it with its
control endpoint; the hub mints the net's key, keeps it sealed under the hub data key and shows it once.
The hub calls the net with it, and the net reports run events and uploads results with it. Trusts are
told each Flower net's fleet address and CA certificate (as the net last reported them) so that their
SuperNodes can dial out to it; nothing dials into a trust.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict, NotFound
from flip_api.core.security import open_secret, seal_secret
from flip_api.db.models import FlBackend, FlNet, NetStatus
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_core.fl_events import INTERNAL_KEY_HEADER, sanitise
from flip_core.keys import mint_key

NET_SUBJECT = "fl_net"
NET_KEY_PREFIX = "flip_nk_"
_KEY_PURPOSE = "fl-net-key"
CALL_TIMEOUT_S = 60.0


class NetError(Exception):
    """A net refused a call (``status`` 4xx/5xx with its error code) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = sanitise(message)

    @property
    def unreachable(self) -> bool:
        return self.status == 0 or self.status >= 500


def net_not_found() -> NotFound:
    return NotFound("FL net not found", code="fl_net_not_found")


def _purpose(net_id: uuid.UUID) -> str:
    return f"{_KEY_PURPOSE}:{net_id}"


def net_key(data_key: bytes, net: FlNet) -> str:
    """The net's key in clear (for calling it, or checking its reports)."""
    if net.wrapped_key is None:
        return ""
    return open_secret(data_key, _purpose(net.id), net.wrapped_key).decode()


async def register_net(
    db: AsyncSession, actor: Actor, data_key: bytes, *, name: str, backend: FlBackend, endpoint: str
) -> tuple[FlNet, str]:
    """A new net (AVAILABLE) and its key, which is returned this once."""
    clash = await db.scalar(select(FlNet.id).where(FlNet.name.ilike(name)))
    if clash is not None:
        raise Conflict(f"an FL net named {name!r} exists", code="fl_net_exists")
    net = FlNet(id=uuid.uuid4(), name=name, backend=backend, endpoint=endpoint.rstrip("/"), status=NetStatus.AVAILABLE)
    key = mint_key(NET_KEY_PREFIX)
    net.wrapped_key = seal_secret(data_key, _purpose(net.id), key.encode())
    db.add(net)
    await db.flush()
    await audit.record(
        db,
        actor,
        "fl_net.registered",
        NET_SUBJECT,
        net.id,
        {"name": name, "backend": backend.value, "endpoint": endpoint},
    )
    return net, key


async def get_net(db: AsyncSession, net_id: uuid.UUID) -> FlNet:
    net = await db.get(FlNet, net_id)
    if net is None:
        raise net_not_found()
    return net


async def list_nets(db: AsyncSession) -> list[FlNet]:
    return list((await db.scalars(select(FlNet).order_by(FlNet.name))).all())


async def update_net(
    db: AsyncSession, actor: Actor, net_id: uuid.UUID, *, enabled: bool | None, endpoint: str | None
) -> FlNet:
    """Enable or disable scheduling onto a net, or move its endpoint. A net running a job stays BUSY until
    the job ends; disabling it only stops new jobs from being scheduled there."""
    net = await get_net(db, net_id)
    changes: dict[str, Any] = {}
    if endpoint is not None and endpoint.rstrip("/") != net.endpoint:
        net.endpoint = endpoint.rstrip("/")
        changes["endpoint"] = net.endpoint
    if enabled is False and net.status is not NetStatus.DISABLED:
        net.status = NetStatus.DISABLED
        changes["status"] = net.status.value
    elif enabled is True and net.status is NetStatus.DISABLED:
        net.status = NetStatus.BUSY if net.current_job_id is not None else NetStatus.AVAILABLE
        changes["status"] = net.status.value
    if changes:
        await audit.record(db, actor, "fl_net.updated", NET_SUBJECT, net.id, changes)
    return net


async def net_for_key(db: AsyncSession, data_key: bytes, key: str | None) -> FlNet | None:
    """The net whose key this is (constant-time comparison against each net's key)."""
    if not key or not key.startswith(NET_KEY_PREFIX):
        return None
    found: FlNet | None = None
    for net in await list_nets(db):
        if net.wrapped_key is not None and hmac.compare_digest(net_key(data_key, net).encode(), key.encode()):
            found = net
    return found


def key_fingerprint(public_key: str) -> str:
    return hashlib.sha256(public_key.strip().encode()).hexdigest()


@dataclass(frozen=True)
class NetHealth:
    status: str
    fleet_address: str
    ca_cert: str
    nodes: list[str]


class NetClient:
    """The hub's side of a net's control API (see ``flip_fl.flower.service``)."""

    def __init__(self, endpoint: str, key: str, *, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._http = httpx.AsyncClient(base_url=endpoint, headers={INTERNAL_KEY_HEADER: key}, timeout=timeout_s)

    async def __aenter__(self) -> NetClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise NetError(0, "net_unreachable", f"the FL net cannot be reached: {type(exc).__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise NetError(
                response.status_code,
                str(error.get("code", "net_error")),
                str(error.get("message", f"HTTP {response.status_code}")),
            )
        return body if isinstance(body, dict) else {}

    async def health(self) -> NetHealth:
        body = await self._call("GET", "/health")
        return NetHealth(
            status=str(body.get("status", "")),
            fleet_address=str(body.get("fleet_address", "")),
            ca_cert=str(body.get("ca_cert", "")),
            nodes=[str(n) for n in body.get("nodes", [])],
        )

    async def register_node(self, trust_code: str, public_key: str) -> dict[str, Any]:
        return await self._call("PUT", f"/nodes/{trust_code}", {"public_key": public_key})

    async def submit(self, job_id: uuid.UUID, files: dict[str, str], run_config: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/runs", {"job_id": str(job_id), "files": files, "run_config": run_config})

    async def status(self, job_id: uuid.UUID) -> dict[str, Any]:
        return await self._call("GET", f"/runs/{job_id}")

    async def stop(self, job_id: uuid.UUID) -> dict[str, Any]:
        return await self._call("POST", f"/runs/{job_id}/stop")


def now() -> datetime:
    return datetime.now(UTC)
