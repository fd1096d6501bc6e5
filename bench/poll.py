"""Task pickup latency and idle load: long-poll leasing vs fixed 5 s polling, in one run.

Starts an embedded PostgreSQL and one hub process on loopback, registers N trusts through the admin API,
then runs two phases against the same hub with N simulated trust agents (in this process, over real HTTP):

- **baseline** — the upstream style: every trust asks for pending work every 5 s (``wait=0``);
- **ours** — every trust holds a long-poll lease (``wait`` 20–25 s, jittered like the agent's) that the
  hub answers the moment work is enqueued for it (PostgreSQL LISTEN/NOTIFY), plus a health heartbeat
  every 30 s.

Each phase measures the idle request rate per trust (no work for a while), then enqueues ``ping`` tasks
for random trusts through the admin API and records enqueue→receipt latency at the trust.  The hub
process's CPU time is read from /proc for each window.  Figures go to stdout and bench/results/poll.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from flip_api.db.session import ensure_database
from flip_cli.demo.processes import HubProcess, free_port
from flip_core.contract import PROTOCOL_HEADER, PROTOCOL_VERSION, TRUST_KEY_HEADER
from flip_core.embedded_pg import EmbeddedPostgres

# One TLS context for all simulated trusts: building one per client costs ~20 ms of CPU each.
_TLS = ssl.create_default_context()
RESULTS = Path(__file__).resolve().parent / "results" / "poll.json"
BASELINE_INTERVAL_S = 5.0
LONG_POLL_WAIT_S = 25.0
HEARTBEAT_INTERVAL_S = 30.0


@dataclass
class Trust:
    id: str
    key: str


@dataclass
class Phase:
    name: str
    requests: int = 0
    enqueued: dict[str, float] = field(default_factory=dict)  # task id -> monotonic time before enqueue
    picked: dict[str, float] = field(default_factory=dict)  # task id -> monotonic time of receipt
    errors: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    r = await client.post("/api/auth/login", json={"email": email, "password": password})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['tokens']['access_token']}"}


async def register_trusts(client: httpx.AsyncClient, admin: dict[str, str], n: int) -> list[Trust]:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> Trust:
        async with sem:
            r = await client.post("/api/trusts", headers=admin, json={"name": f"Bench trust {i}", "code": f"B{i:05d}"})
            r.raise_for_status()
            body = r.json()
            return Trust(body["trust"]["id"], body["api_key"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def simulated_trust(base_url: str, trust: Trust, phase: Phase, mode: str, stop: asyncio.Event) -> None:
    """One trust: its own small connection pool (a shared pool of thousands is slow in httpx)."""
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=LONG_POLL_WAIT_S + 30, verify=_TLS
    ) as client:
        loops = [agent(client, trust, phase, mode, stop)]
        if mode == "ours":
            loops.append(heartbeats(client, trust, phase, stop))
        await asyncio.gather(*loops)


async def agent(client: httpx.AsyncClient, trust: Trust, phase: Phase, mode: str, stop: asyncio.Event) -> None:
    headers = {TRUST_KEY_HEADER: trust.key, PROTOCOL_HEADER: PROTOCOL_VERSION}
    # Trusts start spread over one poll period, as agents started at different times are.
    await asyncio.sleep(random.uniform(0, LONG_POLL_WAIT_S if mode == "ours" else BASELINE_INTERVAL_S))
    while not stop.is_set():
        started = time.monotonic()
        # Like the real agent: each long-poll asks for the configured wait less up to a fifth.
        wait = round(LONG_POLL_WAIT_S * random.uniform(0.8, 1.0), 1) if mode == "ours" else 0.0
        try:
            phase.requests += 1  # counted when sent: a long-poll is one request however long it waits
            r = await client.post("/api/trust/tasks/lease", params={"wait": wait}, headers=headers, json={})
            r.raise_for_status()
            received = time.monotonic()
            for task in r.json()["tasks"]:
                phase.picked[task["id"]] = received
                body = {"lease_token": task["lease_token"], "outcome": "completed", "result": {"ok": True}}
                phase.requests += 1
                await client.post(f"/api/trust/tasks/{task['id']}/result", headers=headers, json=body)
        except httpx.HTTPError:
            phase.errors += 1
            await asyncio.sleep(1)
        if mode == "baseline":
            await asyncio.sleep(max(0.0, BASELINE_INTERVAL_S - (time.monotonic() - started)))


async def heartbeats(client: httpx.AsyncClient, trust: Trust, phase: Phase, stop: asyncio.Event) -> None:
    headers = {TRUST_KEY_HEADER: trust.key, PROTOCOL_HEADER: PROTOCOL_VERSION}
    await asyncio.sleep(random.uniform(0, HEARTBEAT_INTERVAL_S))
    while not stop.is_set():
        body = {"agent_version": "bench", "started_at": "2026-01-01T00:00:00Z", "services": {}}
        try:
            phase.requests += 1
            await client.post("/api/trust/heartbeat", headers=headers, json=body)
        except httpx.HTTPError:
            phase.errors += 1
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def run_phase(
    base_url: str, hub_pid: int, admin: dict[str, str], trusts: list[Trust], mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    phase = Phase(mode)
    stop = asyncio.Event()
    workers = [asyncio.create_task(simulated_trust(base_url, t, phase, mode, stop)) for t in trusts]
    await asyncio.sleep(args.warmup)
    print(f"  {mode}: warmed up ({phase.requests} requests, {phase.errors} errors)", flush=True)
    # Idle window: no work is enqueued; count what the trusts cost the hub.
    requests0, cpu0, t0 = phase.requests, cpu_seconds(hub_pid), time.monotonic()
    await asyncio.sleep(args.idle)
    idle_s = time.monotonic() - t0
    idle_requests = phase.requests - requests0
    idle_cpu = cpu_seconds(hub_pid) - cpu0
    print(f"  {mode}: idle window done; enqueueing {args.tasks} tasks", flush=True)
    # Load window: pings to random trusts at a steady rate, through the admin API.
    cpu1, t1 = cpu_seconds(hub_pid), time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as admin_client:
        for _ in range(args.tasks):
            trust = random.choice(trusts)
            sent = time.monotonic()
            try:
                r = await admin_client.post(f"/api/trusts/{trust.id}/ping", headers=admin, json={"message": "bench"})
                r.raise_for_status()
                phase.enqueued[r.json()["id"]] = sent
            except httpx.HTTPError:
                phase.errors += 1
            await asyncio.sleep(1 / args.rate)
    for _ in range(int(BASELINE_INTERVAL_S * 3 / 0.1)):  # give the last tasks up to three poll periods
        if phase.enqueued.keys() <= phase.picked.keys():
            break
        await asyncio.sleep(0.1)
    print(f"  {mode}: {len(phase.picked)}/{len(phase.enqueued)} picked up", flush=True)
    load_s = time.monotonic() - t1
    load_cpu = cpu_seconds(hub_pid) - cpu1
    stop.set()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    latencies = [(phase.picked[k] - v) * 1000 for k, v in phase.enqueued.items() if k in phase.picked]
    return {
        "mode": mode,
        "tasks": len(phase.enqueued),
        "picked": len(latencies),
        "pickup_p50_ms": percentile(latencies, 0.50),
        "pickup_p99_ms": percentile(latencies, 0.99),
        "pickup_mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "idle_req_per_s_per_trust": idle_requests / idle_s / len(trusts),
        "idle_hub_cpu_percent": 100 * idle_cpu / idle_s,
        "load_hub_cpu_percent": 100 * load_cpu / load_s,
        "errors": phase.errors,
    }


def ratio(ours: float, base: float) -> str:
    return f"{base / ours:.1f}x better" if ours > 0 else "n/a"


async def main_async(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="flip-bench-poll-"))
    os.chmod(state, 0o755)  # noqa: S103 - the embedded server runs as its own user when we are root
    pg = EmbeddedPostgres(state / "pgdata", persistent=False)
    url = pg.url("flip")
    ensure_database(url)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "FLIP_STATE_DIR": str(state),
        "FLIP_MFA_REQUIRED": "false",  # development switch: the bench signs in with a password only
        "FLIP_LOG_LEVEL": "WARNING",
        "FLIP_DB_POOL_SIZE": "20",
        "FLIP_HUB_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    hub = HubProcess(port=port, env=env, log_path=state / "hub.log")
    try:
        password = "bench-password-" + os.urandom(4).hex()
        created = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flip_cli.main",
            "admin",
            "create-user",
            "--email",
            "bench@example.org",
            "--name",
            "Bench",
            "--role",
            "Admin",
            "--password-stdin",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        await created.communicate(password.encode())
        if created.returncode != 0:
            raise SystemExit("could not create the bench admin")
        hub.start()
        hub.wait_healthy(60)
        assert hub.pid is not None
        async with httpx.AsyncClient(base_url=hub.url, timeout=60) as client:
            admin = await sign_in(client, "bench@example.org", password)
            print(f"registering {args.trusts} trusts...", flush=True)
            trusts = await register_trusts(client, admin, args.trusts)
        results = {}
        for mode in ("baseline", "ours"):
            print(f"phase {mode}: {args.trusts} trusts, idle {args.idle}s, {args.tasks} tasks", flush=True)
            results[mode] = await run_phase(hub.url, hub.pid, admin, trusts, mode, args)
    finally:
        hub.stop()
        pg.stop()
    ours, base = results["ours"], results["baseline"]
    summary = {
        "trusts": args.trusts,
        "tasks_per_phase": args.tasks,
        "pickup_p50_ms": round(ours["pickup_p50_ms"], 1),
        "pickup_p99_ms": round(ours["pickup_p99_ms"], 1),
        "baseline_pickup_p50_ms": round(base["pickup_p50_ms"], 1),
        "baseline_pickup_p99_ms": round(base["pickup_p99_ms"], 1),
        "p50_ratio_vs_baseline": round(base["pickup_p50_ms"] / ours["pickup_p50_ms"], 1),
        "idle_req_per_s_per_trust": round(ours["idle_req_per_s_per_trust"], 4),
        "baseline_idle_req_per_s_per_trust": round(base["idle_req_per_s_per_trust"], 4),
        "idle_hub_cpu_percent": round(ours["idle_hub_cpu_percent"], 1),
        "baseline_idle_hub_cpu_percent": round(base["idle_hub_cpu_percent"], 1),
        "load_hub_cpu_percent": round(ours["load_hub_cpu_percent"], 1),
        "baseline_load_hub_cpu_percent": round(base["load_hub_cpu_percent"], 1),
        "picked": {"ours": ours["picked"], "baseline": base["picked"]},
        "errors": {"ours": ours["errors"], "baseline": base["errors"]},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"trusts: {args.trusts}")
    for q in ("p50", "p99"):
        mine, theirs = ours[f"pickup_{q}_ms"], base[f"pickup_{q}_ms"]
        print(f"pickup {q}: {mine:.1f} ms ({ratio(mine, theirs)} than baseline {theirs:.0f} ms)")
    print(
        f"idle load: {ours['idle_req_per_s_per_trust']:.3f} req/s per trust "
        f"({ratio(ours['idle_req_per_s_per_trust'], base['idle_req_per_s_per_trust'])} than baseline "
        f"{base['idle_req_per_s_per_trust']:.3f})"
    )
    print(
        f"hub CPU idle: {ours['idle_hub_cpu_percent']:.1f} % (baseline {base['idle_hub_cpu_percent']:.1f} %); "
        f"under load: {ours['load_hub_cpu_percent']:.1f} % (baseline {base['load_hub_cpu_percent']:.1f} %)"
    )
    print(
        f"picked up: ours {ours['picked']}/{ours['tasks']}, baseline {base['picked']}/{base['tasks']}; "
        f"errors: ours {ours['errors']}, baseline {base['errors']}"
    )
    print(f"written: {RESULTS}")
    return 0


def _exit_on_sigterm() -> None:
    # ``timeout`` and CI send SIGTERM: leave through the finally blocks so the hub and PostgreSQL stop.
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    _exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trusts", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=200, help="ping tasks enqueued per phase")
    parser.add_argument("--rate", type=float, default=10.0, help="tasks enqueued per second")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
