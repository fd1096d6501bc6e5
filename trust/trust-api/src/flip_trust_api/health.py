"""Health: probes of the trust's own services, and the agent's ``/health`` endpoint.

Each probe answers one question within a timeout, and the collector turns the answer into a
:class:`~flip_core.tasks.ServiceHealth`: ``healthy``; ``degraded`` when it answered but slowly;
``down`` when it failed or timed out; ``unknown`` when the service is not configured.  What a probe
reports to the hub is a short, fixed description — the exception text (host names, ports, libpq
messages) stays in the agent's log.

``/health`` is the agent's only inbound route.  It listens on loopback unless told otherwise and
returns the agent's state as JSON.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import psycopg
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flip_core.contract import ServiceState
from flip_core.tasks import ServiceHealth

log = logging.getLogger(__name__)

DATA_ACCESS_API = "data-access-api"
IMAGING_API = "imaging-api"
PACS = "pacs"
OMOP_DB = "omop-db"


class ProbeFailed(Exception):
    """A probe's target answered wrongly; the message is safe to report to the hub."""


@dataclass(frozen=True)
class ProbeAnswer:
    """What a probe found when it got an answer (slowness is judged by the collector)."""

    state: ServiceState = ServiceState.HEALTHY
    detail: str = ""


class Probe(Protocol):
    """One check of one service; raises on failure (the collector adds the timeout and latency)."""

    @property
    def name(self) -> str:
        """The service's name in the health snapshot."""
        ...

    async def check(self) -> ProbeAnswer:
        """Look at the service once."""
        ...


@dataclass(frozen=True)
class NotConfigured:
    """A service the agent was not told about: reported as ``unknown``, never as ``down``."""

    name: str
    setting: str

    async def check(self) -> ProbeAnswer:
        """Nothing to look at."""
        return ProbeAnswer(ServiceState.UNKNOWN, f"not configured ({self.setting} is unset)")


@dataclass(frozen=True)
class HttpHealthProbe:
    """``GET <base_url>/health`` of a FLIP trust service; 2xx is healthy (a reported ``status`` is honoured)."""

    name: str
    base_url: str
    http: httpx.AsyncClient

    async def check(self) -> ProbeAnswer:
        """One GET; non-2xx is down."""
        response = await self.http.get(self.base_url.rstrip("/") + "/health")
        if not response.is_success:
            raise ProbeFailed(f"/health answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = None
        reported = body.get("status") if isinstance(body, dict) else None
        if reported in (ServiceState.DEGRADED.value, ServiceState.DOWN.value):
            return ProbeAnswer(ServiceState(reported), f"the service reports itself {reported}")
        return ProbeAnswer()


@dataclass(frozen=True)
class TcpReachabilityProbe:
    """Opens a TCP connection to the PACS DICOM port: reachability only, not yet a DICOM C-ECHO."""

    name: str
    host: str
    port: int

    async def check(self) -> ProbeAnswer:
        """Connect and close."""
        _reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            log.debug("PACS connection closed uncleanly after the reachability check")
        return ProbeAnswer(detail="TCP port reachable (DICOM C-ECHO not checked)")


@dataclass(frozen=True)
class PostgresProbe:
    """Connects to the OMOP database and runs ``SELECT 1``."""

    name: str
    dsn: SecretStr
    timeout_s: float

    async def check(self) -> ProbeAnswer:
        """One connection, one query."""
        conn = await psycopg.AsyncConnection.connect(
            self.dsn.get_secret_value(), connect_timeout=max(1, math.ceil(self.timeout_s)), autocommit=True
        )
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close()
        return ProbeAnswer()


async def run_probe(probe: Probe, *, timeout_s: float, slow_s: float) -> ServiceHealth:
    """Run one probe with a timeout and judge it: healthy, degraded (slower than ``slow_s``), down, unknown."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            answer = await probe.check()
    except TimeoutError:
        return _health(ServiceState.DOWN, started, f"no answer within {timeout_s:g} s")
    except ProbeFailed as exc:
        return _health(ServiceState.DOWN, started, str(exc))
    except (OSError, httpx.HTTPError, psycopg.Error) as exc:
        log.info("health probe failed", extra={"probe": probe.name, "error": f"{type(exc).__name__}: {exc}"})
        return _health(ServiceState.DOWN, started, f"cannot connect ({type(exc).__name__})")
    except Exception:
        log.exception("health probe raised an unexpected error", extra={"probe": probe.name})
        return _health(ServiceState.DOWN, started, "probe error; see the trust agent's log")
    if answer.state is ServiceState.UNKNOWN:
        return ServiceHealth(state=ServiceState.UNKNOWN, detail=answer.detail, checked_at=datetime.now(UTC))
    health = _health(answer.state, started, answer.detail)
    if health.state is ServiceState.HEALTHY and (health.latency_ms or 0) > slow_s * 1000:
        detail = f"slow: answered in {health.latency_ms:.0f} ms"
        return health.model_copy(update={"state": ServiceState.DEGRADED, "detail": detail})
    return health


def _health(state: ServiceState, started: float, detail: str) -> ServiceHealth:
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    return ServiceHealth(state=state, latency_ms=latency_ms, detail=detail[:2000], checked_at=datetime.now(UTC))


async def collect_health(probes: Sequence[Probe], *, timeout_s: float, slow_s: float) -> dict[str, ServiceHealth]:
    """Run every probe concurrently; one slow service never delays the others' answers."""
    results = await asyncio.gather(*(run_probe(p, timeout_s=timeout_s, slow_s=slow_s) for p in probes))
    return {p.name: r for p, r in zip(probes, results, strict=True)}


def build_probes(
    *,
    http: httpx.AsyncClient,
    data_access_url: str | None,
    imaging_url: str | None,
    pacs_host: str | None,
    pacs_port: int,
    omop_dsn: SecretStr | None,
    timeout_s: float,
) -> list[Probe]:
    """The standard probes, one per trust service; unconfigured services report ``unknown``."""
    probes: list[Probe] = [
        HttpHealthProbe(DATA_ACCESS_API, data_access_url, http)
        if data_access_url
        else NotConfigured(DATA_ACCESS_API, "FLIP_AGENT_DATA_ACCESS_URL"),
        HttpHealthProbe(IMAGING_API, imaging_url, http)
        if imaging_url
        else NotConfigured(IMAGING_API, "FLIP_AGENT_IMAGING_URL"),
        TcpReachabilityProbe(PACS, pacs_host, pacs_port) if pacs_host else NotConfigured(PACS, "FLIP_AGENT_PACS_HOST"),
        PostgresProbe(OMOP_DB, omop_dsn, timeout_s) if omop_dsn else NotConfigured(OMOP_DB, "FLIP_AGENT_OMOP_DSN"),
    ]
    return probes


def initial_health(probes: Sequence[Probe]) -> dict[str, ServiceHealth]:
    """``unknown`` for every probe, until the first round of checks has run."""
    now = datetime.now(UTC)
    return {p.name: ServiceHealth(state=ServiceState.UNKNOWN, detail="not checked yet", checked_at=now) for p in probes}


StatusSnapshot = Callable[[], tuple[int, dict[str, Any]]]


class _AgentOwnedSignals(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to the agent (which shuts down in its own order)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HealthServer:
    """Serves ``GET /health`` (the agent's only inbound route) from a uvicorn server inside the agent's loop."""

    def __init__(self, snapshot: StatusSnapshot, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._snapshot = snapshot
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Where ``/health`` answers (after :meth:`start`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/health"

    async def _health(self, _request: Request) -> JSONResponse:
        status, body = self._snapshot()
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    async def start(self) -> int:
        """Bind (port 0 picks a free one) and start serving; returns the port."""
        family, kind, proto, _name, address = socket.getaddrinfo(
            self.host, self.requested_port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        app = Starlette(routes=[Route("/health", self._health, methods=["GET"])])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False)
        server = _AgentOwnedSignals(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="health-server")
        while not server.started:
            if self._task.done():
                sock.close()
                await self._task  # re-raises why it could not start
                raise RuntimeError("the /health server stopped during start-up")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        self._server = None
        self._task = None
