"""Health probes (against real servers and a real PostgreSQL) and the agent's ``/health`` endpoint."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from trust_testing import free_port

from flip_api.db.session import libpq_conninfo
from flip_core.contract import ServiceState
from flip_trust_api.health import (
    HealthServer,
    HttpHealthProbe,
    NotConfigured,
    PostgresProbe,
    ProbeAnswer,
    TcpReachabilityProbe,
    build_probes,
    collect_health,
    run_probe,
)


@dataclass(frozen=True)
class SleepyProbe:
    name: str
    seconds: float

    async def check(self) -> ProbeAnswer:
        await asyncio.sleep(self.seconds)
        return ProbeAnswer()


async def test_an_unconfigured_service_is_unknown_not_down() -> None:
    health = await run_probe(NotConfigured("pacs", "FLIP_AGENT_PACS_HOST"), timeout_s=1, slow_s=1)
    assert health.state is ServiceState.UNKNOWN
    assert health.latency_ms is None
    assert "FLIP_AGENT_PACS_HOST" in health.detail


async def test_nothing_configured_means_every_service_unknown() -> None:
    async with httpx.AsyncClient() as http:
        probes = build_probes(
            http=http,
            data_access_url=None,
            imaging_url=None,
            pacs_host=None,
            pacs_port=104,
            omop_dsn=None,
            timeout_s=1,
        )
        snapshot = await collect_health(probes, timeout_s=1, slow_s=1)
    assert {n: h.state for n, h in snapshot.items()} == {
        "data-access-api": ServiceState.UNKNOWN,
        "imaging-api": ServiceState.UNKNOWN,
        "pacs": ServiceState.UNKNOWN,
        "omop-db": ServiceState.UNKNOWN,
    }


async def test_slow_is_degraded_and_no_answer_is_down() -> None:
    slow = await run_probe(SleepyProbe("svc", 0.15), timeout_s=2, slow_s=0.05)
    assert slow.state is ServiceState.DEGRADED
    assert slow.latency_ms is not None
    assert slow.latency_ms >= 150
    assert slow.detail.startswith("slow")
    hung = await run_probe(SleepyProbe("svc", 5), timeout_s=0.1, slow_s=0.05)
    assert hung.state is ServiceState.DOWN
    assert "within 0.1 s" in hung.detail


async def test_probes_run_concurrently() -> None:
    started = time.perf_counter()
    snapshot = await collect_health([SleepyProbe(f"s{i}", 0.3) for i in range(5)], timeout_s=2, slow_s=1)
    assert time.perf_counter() - started < 1.0
    assert all(h.state is ServiceState.HEALTHY for h in snapshot.values())


def _serving(status: int, body: dict[str, Any]) -> HealthServer:
    return HealthServer(lambda: (status, body))


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"status": "ok"}, ServiceState.HEALTHY),
        (200, {"status": "degraded"}, ServiceState.DEGRADED),
        (503, {"status": "stopping"}, ServiceState.DOWN),
    ],
)
async def test_http_probe_reads_the_service_health_route(
    status: int, body: dict[str, Any], expected: ServiceState
) -> None:
    server = _serving(status, body)
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{server.port}"
            health = await run_probe(HttpHealthProbe("imaging-api", base, http), timeout_s=5, slow_s=5)
    finally:
        await server.stop()
    assert health.state is expected
    assert health.latency_ms is not None


async def test_http_probe_of_a_closed_port_is_down_without_leaking_addresses() -> None:
    port = free_port()
    async with httpx.AsyncClient() as http:
        health = await run_probe(
            HttpHealthProbe("data-access-api", f"http://127.0.0.1:{port}", http), timeout_s=5, slow_s=5
        )
    assert health.state is ServiceState.DOWN
    assert health.detail == "cannot connect (ConnectError)"


async def test_tcp_reachability_probe() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        up = await run_probe(TcpReachabilityProbe("pacs", "127.0.0.1", port), timeout_s=5, slow_s=5)
    finally:
        server.close()
        await server.wait_closed()
    assert up.state is ServiceState.HEALTHY
    assert "C-ECHO not checked" in up.detail
    down = await run_probe(TcpReachabilityProbe("pacs", "127.0.0.1", free_port()), timeout_s=5, slow_s=5)
    assert down.state is ServiceState.DOWN
    assert down.detail == "cannot connect (ConnectionRefusedError)"


async def test_postgres_probe_against_a_real_server(pg_server_url: str) -> None:
    dsn = libpq_conninfo(pg_server_url)
    up = await run_probe(PostgresProbe("omop-db", SecretStr(dsn), 5), timeout_s=5, slow_s=5)
    assert up.state is ServiceState.HEALTHY
    missing = dsn.replace("dbname='postgres'", "dbname='no_such_omop_database'")
    assert missing != dsn
    down = await run_probe(PostgresProbe("omop-db", SecretStr(missing), 5), timeout_s=5, slow_s=5)
    assert down.state is ServiceState.DOWN
    assert "no_such_omop_database" not in down.detail


async def test_health_endpoint_picks_a_free_port_and_serves_only_get_health() -> None:
    server = _serving(200, {"status": "running"})
    port = await server.start()
    try:
        assert port > 0
        assert server.url == f"http://127.0.0.1:{port}/health"
        async with httpx.AsyncClient() as http:
            ok = await http.get(server.url)
            assert ok.status_code == 200
            assert ok.json() == {"status": "running"}
            assert ok.headers["cache-control"] == "no-store"
            assert (await http.post(server.url)).status_code == 405
            assert (await http.get(f"http://127.0.0.1:{port}/tasks")).status_code == 404
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(server.url)
