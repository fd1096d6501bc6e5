"""Federated learning on FLIP: the platform's latency and per-round cost, and what federation costs in quality.

Three measurements, each a function (``--only first_step,round_overhead,quality`` runs a subset):

- **first_step** — time from a researcher's ``POST /api/models/{id}/jobs`` to the first call of the
  researcher's ``train`` at a trust, through the whole platform, stood up in this process as
  flip-api/tests/api/routes/test_fl_runs.py stands it up: the hub (embedded PostgreSQL, migrated, served
  by uvicorn on a loopback port), an FL net (``flip_fl.flower.service`` in a uvicorn thread, its
  SuperLink with TLS and node authentication), ``--trusts`` trusts registered, a project approved at each
  through the API, and each trust's ``FlClients`` running its SuperNode once the scheduler registered its
  key. The researcher's ``train`` writes ``time.time()`` to a marker file on its first call. The FL
  scheduler pass (``fl_runs.tick``, what the hub's worker runs) is driven every 0.5 s, the first right
  after the POST. Baseline: a bare ``python -c "import torch, flwr"`` started the same way (the floor
  every ClientApp process pays).
- **round_overhead** — a round where compute dominates (an MLP on synthetic points, calibrated to
  ``--round-seconds`` of training on one thread), ``--rounds`` rounds at one trust: as one local Python
  process calling the researcher's ``train`` once per round with the weights carried over (the baseline,
  run before and after, mean of the two), and through a Flower net used directly as
  fl/tests/flower/test_flower_run.py does (SuperLink + SuperNode + ``flwr run``, ``final_evaluation``
  off), twice: with the SuperNode as FLIP's trusts run it (ClientApps forked from the preloaded
  ``flip_fl.flower.executor``; the ratio reported) and as Flower runs it by default (a new
  ``flwr-clientapp`` program per instruction; for comparison). The platform's round is
  ``round_started`` → ``round_completed`` in the run's report file; the researcher's ``train`` also
  returns when its process started, when it was called and how long it ran, so the round splits into the
  ClientApp's start, ``train`` itself and the way back. The same seeds give the same training on both
  sides (the train losses are compared).
- **quality** — the tabular tutorial (fl/tutorials/tabular) on the north, south and east synthetic
  trusts (different sites, units and prevalences), in-process through the trainer SDK's local-dev mode:
  FedAvg (``flip_fl.aggregate.fedavg``, weighted by ``num_examples``) over the three trusts, central
  training on their pooled training rows for the same epochs, and each trust alone, all scored by AUC
  on the same pooled held-out set (the union of every trust's held-out rows).

Prints ``name: value unit (ratio vs baseline)`` and writes bench/results/fl.json (only the parts run).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pandas as pd
import torch
import uvicorn
from fastapi import FastAPI

import flip
import flip.context
from flip_api.core.config import HubSettings
from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.db.session import ensure_database, transaction
from flip_api.main import create_app
from flip_api.services import auth as auth_service
from flip_api.services import fl_runs
from flip_api.services import trusts as trusts_service
from flip_api.services import users as users_service
from flip_api.services.audit import Actor
from flip_core.cohort import DEFAULT_MIN_K, CohortQueryPayload, CohortStatistics, ColumnCounts, GatedCount
from flip_core.contract import PROTOCOL_HEADER, PROTOCOL_VERSION, TRUST_KEY_HEADER, TrustKit
from flip_core.crypto import Envelope, Keyring, decode_key
from flip_core.embedded_pg import throwaway_server
from flip_core.tasks import TaskType, payload_purpose
from flip_fl.aggregate import Update, fedavg
from flip_fl.flower import pki
from flip_fl.flower.bundle import TEMPLATE_DIR, build_bundle
from flip_fl.flower.events import RoundCompleted, RoundStarted, read_report
from flip_fl.flower.net import FlowerControl, SuperLinkProcess, SuperNodeProcess, free_port
from flip_fl.flower.researcher import seed_everything
from flip_fl.flower.service import NetConfig
from flip_fl.flower.service import create_app as create_net_app
from flip_omop import get_profile
from flip_trust_api.fl_client import FlClients, TrainerEnvironment
from flip_trust_api.fl_protocol import FlNetInfo

REPO = Path(__file__).resolve().parents[1]
# Torch on one thread in every process started from here (SuperLink, SuperNodes, ClientApps, the local loop).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RESULTS = Path(__file__).resolve().parent / "results" / "fl.json"
TABULAR = REPO / "fl" / "tutorials" / "tabular"
MAKE_DEV_DATA = REPO / "fl" / "tutorials" / "make_dev_data.py"
PARTS = ("first_step", "round_overhead", "quality")
TERMINAL = {"RESULTS_UPLOADED", "ERROR", "STOPPED", "RESULTS_UPLOAD_FAILED"}
TICK_S = 0.5
QUALITY_TRUSTS = ("north", "south", "east")

# --------------------------------------------------------------------------------- the researcher's code
# One app for first_step and round_overhead: an MLP on synthetic points made from the seed; the first
# ``train`` call at each trust writes time.time() to <marker_dir>/<trust>.

MODELS_PY = '''"""Benchmark model: an MLP on 256 features, two hidden layers of 1024, ten classes."""

import torch

FEATURES, HIDDEN, CLASSES = 256, 1024, 10


def get_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
    )
'''

CLIENT_APP_PY = '''"""Benchmark trainer: synthetic points from the seed; the first train call leaves a timestamp."""

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _first_call(config):
    marker_dir = config.get("marker_dir")
    if not marker_dir:
        return
    path = Path(marker_dir) / config["trust"]
    if not path.exists():
        stamp = repr(time.time())
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(stamp)
        os.replace(partial, path)


def _data(model, config):
    generator = torch.Generator().manual_seed(int(config["seed"]))
    features, classes = model[0].in_features, model[-1].out_features
    x = torch.randn(int(config["samples"]), features, generator=generator)
    y = (x @ torch.randn(features, classes, generator=generator)).argmax(dim=1)
    return x, y


def _score(model, x, y):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return {"loss": loss, "accuracy": accuracy, "num_examples": float(len(y))}


def _process_started():
    try:
        import psutil
    except ImportError:
        return 0.0
    return psutil.Process().create_time()


def train(model, config):
    entered = time.time()
    _first_call(config)
    x, y = _data(model, config)
    optimiser = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=0.9)
    shuffle = torch.Generator().manual_seed(int(config["seed"]) * 1000 + int(config["round"]))
    model.train()
    for _ in range(int(config["epochs"])):
        for batch in torch.randperm(len(y), generator=shuffle).split(int(config["batch_size"])):
            optimiser.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    timings = {"process_started_at": _process_started(), "train_entered_at": entered, "train_s": time.time() - entered}
    return {**_score(model, x, y), **timings}


def evaluate(model, config):
    x, y = _data(model, config)
    return _score(model, x, y)
'''

# The baseline of round_overhead: one process, the researcher's train once per round, weights carried over,
# each round set up as FLIP's ClientApp sets it up (seeded, a fresh get_model() loaded with the weights).
LOCAL_LOOP_PY = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from flip_fl.flower.researcher import researcher_module, seed_everything
app, rounds, seed, config = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
models, client = researcher_module(app, "models"), researcher_module(app, "client_app")
seed_everything(seed)
state = models.get_model().state_dict()
seconds, metrics = [], []
for number in range(1, rounds + 1):
    seed_everything(seed * 1000 + number)
    model = models.get_model()
    model.load_state_dict(state)
    started = time.perf_counter()
    metrics.append(client.train(model, {**config, "round": number, "seed": seed, "trust": "AAA"}))
    seconds.append(time.perf_counter() - started)
    state = model.state_dict()
print(json.dumps({"seconds": seconds, "metrics": metrics}))
"""

APP_CONFIG = {"samples": 8192, "batch_size": 128, "lr": 0.05, "epochs": 1}


def write_app(directory: Path, config: dict[str, Any]) -> dict[str, Path]:
    """The researcher's three files in ``directory``; returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"client_app.py": CLIENT_APP_PY, "models.py": MODELS_PY, "config.json": json.dumps(config)}
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return {name: directory / name for name in files}


def load_module(path: Path, name: str) -> ModuleType:
    """Import a file by path (tutorials and temporary apps are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_floor_s(repeat: int = 3) -> list[float]:
    """Seconds from spawning ``python -c "import torch, flwr"`` to the end of its imports, ``repeat`` times."""
    code = "import torch, flwr, time; print(repr(time.time()))"
    times = []
    for _ in range(repeat):
        started = time.time()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip()) - started)
    return times


def at(timestamp: str) -> float:
    """Epoch seconds of an event's ISO timestamp."""
    stamp = datetime.fromisoformat(timestamp)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


# ----------------------------------------------------------------------------- (a) time to first step


class ThreadServer:
    """A uvicorn server on its own thread and event loop (the FL net's control API)."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the FL net's control API did not start")
            time.sleep(0.1)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def ok(response: httpx.Response, status: int = 200) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json() if response.content else None


async def signed_in_user(hub: HubState, role: RoleName) -> dict[str, str]:
    """A user with ``role`` and a session, created through the hub's services (as the hub's tests do)."""
    async with transaction(hub.sessions) as db:
        user, _ = await users_service.create_user(
            db,
            Actor.system("bench"),
            email=f"bench-{uuid.uuid4().hex[:8]}@example.org",
            name=f"Bench {role.value}",
            roles=[role],
            password="bench-" + uuid.uuid4().hex,
        )
        tokens = await auth_service.start_session(db, hub, user)
    return {"Authorization": f"Bearer {tokens.access_token}"}


async def register_trust(hub: HubState, code: str, hub_url: str) -> tuple[uuid.UUID, TrustKit]:
    async with transaction(hub.sessions) as db:
        issued = await trusts_service.register_trust(
            db, Actor.system("bench"), data_key=hub.data_key, hub_url=hub_url, name=f"Trust {code}", code=code
        )
    return issued.trust.id, issued.kit


def trust_headers(kit: TrustKit) -> dict[str, str]:
    return {TRUST_KEY_HEADER: kit.api_key, PROTOCOL_HEADER: PROTOCOL_VERSION}


async def answer_cohort_queries(client: httpx.AsyncClient, kit: TrustKit, persons: int = 100) -> None:
    """Act as the trust's agent: lease the waiting cohort queries and answer each with ``persons``."""
    body = {"max_tasks": 50, "types": [TaskType.COHORT_QUERY.value]}
    leased = ok(await client.post("/api/trust/tasks/lease", headers=trust_headers(kit), json=body))["tasks"]
    ring = Keyring({kit.payload_key_id: decode_key(kit.payload_key)}, current=kit.payload_key_id)
    for task in leased:
        opened = ring.open_json(Envelope.model_validate(task["payload"]), payload_purpose(TaskType(task["type"])))
        query = CohortQueryPayload.model_validate(opened)
        count = GatedCount(value=persons, suppressed=False)
        stats = CohortStatistics(
            query_id=query.query_id,
            record_count=count,
            k=DEFAULT_MIN_K,
            columns=[ColumnCounts(column="person_id", non_null=count, null=GatedCount(value=None, suppressed=True))],
            distributions=[],
            computed_at=datetime.now(UTC),
        )
        result = {"lease_token": task["lease_token"], "outcome": "completed", "result": stats.model_dump(mode="json")}
        ok(await client.post(f"/api/trust/tasks/{task['id']}/result", headers=trust_headers(kit), json=result))


async def approved_project(
    client: httpx.AsyncClient, researcher: dict[str, str], admin: dict[str, str], trusts: dict[str, Any]
) -> str:
    """A project whose cohort every trust answered, staged at them and approved at each by the admin."""
    body = {"name": f"Bench {uuid.uuid4().hex[:8]}", "has_imaging": False, "member_ids": []}
    project = ok(await client.post("/api/projects", headers=researcher, json=body), 201)["id"]
    query = {"name": "bench cohort", "sql": "SELECT person_id FROM person"}
    ok(await client.put(f"/api/projects/{project}/query", headers=researcher, json=query))
    ok(await client.post(f"/api/projects/{project}/query/submit", headers=researcher), 202)
    for _, kit in trusts.values():
        await answer_cohort_queries(client, kit)
    ids = [str(trust_id) for trust_id, _ in trusts.values()]
    ok(await client.post(f"/api/projects/{project}/stage", headers=researcher, json={"trust_ids": ids}))
    for trust_id in ids:
        decision = {"decision": "APPROVED"}
        ok(await client.post(f"/api/projects/{project}/trusts/{trust_id}/decision", headers=admin, json=decision))
    return str(project)


def marker_stamps(directory: Path) -> dict[str, float]:
    stamps = {}
    for path in directory.glob("*"):
        if not path.name.endswith(".partial"):
            stamps[path.name] = float(path.read_text())
    return stamps


async def one_job(
    client: httpx.AsyncClient, hub: HubState, researcher: dict[str, str], project: str, markers: Path
) -> dict[str, Any]:
    """Create a model, upload its files, POST a job and tick the scheduler until it ends; the timings."""
    model = ok(
        await client.post(
            f"/api/projects/{project}/models", headers=researcher, json={"name": f"bench-{uuid.uuid4().hex[:8]}"}
        ),
        201,
    )
    model_id = model["id"]
    with tempfile.TemporaryDirectory(prefix="flip-bench-app-") as scratch:
        app = write_app(Path(scratch), {**APP_CONFIG, "samples": 1024, "marker_dir": str(markers)})
        for name, path in app.items():
            url = f"/api/models/{model_id}/files/{name}"
            ok(await client.put(url, headers=researcher, content=path.read_bytes()), 201)
    config = {"rounds": 1, "round_timeout_s": 120, "seed": 3}
    posted = time.time()
    job = ok(await client.post(f"/api/models/{model_id}/jobs", headers=researcher, json={"config": config}), 201)
    submitted: float | None = None
    deadline = time.monotonic() + 300
    while True:
        report = await fl_runs.tick(hub)
        if report.submitted and submitted is None:
            submitted = time.time()
        body = ok(await client.get(f"/api/models/{model_id}/jobs/{job['id']}", headers=researcher))
        if body["job"]["status"] in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job['id']} did not end within 300 s: {body['job']}")
        await asyncio.sleep(TICK_S)
    ended = time.time()
    if body["job"]["status"] != "RESULTS_UPLOADED":
        raise RuntimeError(f"job {job['id']} ended {body['job']['status']}: {body['job']['reason']}")
    stamps = marker_stamps(markers)
    first = min(stamps.values())
    run_started = next(at(e["at"]) for e in body["events"] if e["event"] == "run_started")
    round_started = next(at(e["at"]) for e in body["events"] if e["event"] == "round_started")
    return {
        "time_to_first_step_s": round(first - posted, 3),
        "first_trust": min(stamps, key=stamps.__getitem__),
        "time_to_results_s": round(ended - posted, 3),
        "stages_s": {
            "post_to_submitted": round((submitted or posted) - posted, 3),
            "submitted_to_run_started": round(run_started - (submitted or posted), 3),
            "run_started_to_round_started": round(round_started - run_started, 3),
            "round_started_to_first_train_call": round(first - round_started, 3),
        },
    }


async def first_step_async(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    codes = [f"T{i:02d}" for i in range(1, args.trusts + 1)]
    with throwaway_server("flip-bench-pg-") as pg:
        db_url = pg.url("flip_bench")
        ensure_database(db_url)
        settings = HubSettings(
            FLIP_STATE_DIR=root / "hub",
            FLIP_JWT_SECRET="bench-jwt-secret-" + uuid.uuid4().hex,
            FLIP_LOG_JSON=False,
            FLIP_LOG_LEVEL="WARNING",
            FLIP_WORKER_IN_PROCESS=False,
            FLIP_ARGON2_TIME_COST=1,
            FLIP_ARGON2_MEMORY_KIB=1024,
            FLIP_ARGON2_PARALLELISM=1,
        )
        app = create_app(settings, db_url)
        async with app.router.lifespan_context(app):  # migrates the database, seeds the roles
            hub: HubState = app.state.hub
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
            )
            serving = asyncio.create_task(server.serve())
            clients: dict[str, FlClients] = {}
            try:
                while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
                    await asyncio.sleep(0.05)
                hub_url = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=hub_url, timeout=120) as client:
                    return await _with_net(args, root, hub, client, hub_url, codes, clients)
            finally:
                for fl_client in clients.values():
                    await asyncio.to_thread(fl_client.stop)
                server.should_exit = True
                await serving


async def _with_net(
    args: argparse.Namespace,
    root: Path,
    hub: HubState,
    client: httpx.AsyncClient,
    hub_url: str,
    codes: list[str],
    clients: dict[str, FlClients],
) -> dict[str, Any]:
    researcher, admin = await signed_in_user(hub, RoleName.RESEARCHER), await signed_in_user(hub, RoleName.ADMIN)
    trusts = {code: await register_trust(hub, code, hub_url) for code in codes}
    project = await approved_project(client, researcher, admin, trusts)
    net_port = free_port()
    body = {"name": "bench-net", "endpoint": f"http://127.0.0.1:{net_port}"}
    net_key = ok(await client.post("/api/fl/nets", headers=admin, json=body), 201)["key"]
    config = NetConfig(name="bench-net", state_dir=root / "net", key=net_key, hub_report_url=f"{hub_url}/api/fl")
    with ThreadServer(create_net_app(config), net_port):
        # Each trust's agent: its SuperNode key to the hub; once the scheduler registered the keys on the net,
        # a SuperNode for the net the hub lists. Trusts are online before any job, so wait until they joined.
        for code, (_, kit) in trusts.items():
            trainer = TrainerEnvironment(None, None, None, root / code / "cache")
            clients[code] = FlClients(code, root / code, trainer)
            key = {"public_key": clients[code].public_key}
            ok(await client.put("/api/trust/fl/node-key", headers=trust_headers(kit), json=key))
        await fl_runs.tick(hub)
        for code, (_, kit) in trusts.items():
            nets = [
                FlNetInfo.model_validate(n)
                for n in ok(await client.get("/api/trust/fl/nets", headers=trust_headers(kit)))
            ]
            await asyncio.to_thread(clients[code].reconcile, nets)
        for fl_client in clients.values():
            for node in fl_client.nodes.values():
                await asyncio.to_thread(node.process.wait_ready, 120.0)
        jobs = []
        for number in range(args.jobs):
            jobs.append(await one_job(client, hub, researcher, project, root / "markers" / str(number)))
            print(f"  job {number + 1}: first train() call after {jobs[-1]['time_to_first_step_s']:.2f} s", flush=True)
        return {"trusts": codes, "jobs": jobs}


def first_step(args: argparse.Namespace) -> dict[str, Any]:
    """(a) POST /api/models/{id}/jobs → the first train() call at a trust, through the whole platform."""
    floor = import_floor_s()
    with tempfile.TemporaryDirectory(prefix="flip-bench-fl-") as tmp:
        measured = asyncio.run(first_step_async(args, Path(tmp)))
    times = [j["time_to_first_step_s"] for j in measured["jobs"]]
    value, base = statistics.median(times), statistics.median(floor)
    print(f'import floor (python -c "import torch, flwr"): {base:.2f} s (1.00x vs import floor)')
    print(
        f"time to first step: {value:.2f} s ({value / base:.2f}x vs import floor) — POST /api/models/{{id}}/jobs "
        f"to the first train() call at one of {args.trusts} trusts, median of {len(times)} jobs"
    )
    median_job = sorted(measured["jobs"], key=lambda j: j["time_to_first_step_s"])[(len(times) - 1) // 2]
    stages = median_job["stages_s"]
    print("  stages (the median job): " + ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in stages.items()))
    print(
        f"  the FL scheduler pass (fl_runs.tick, what the hub's worker runs) was driven every {TICK_S} s, the first "
        "right after the POST; a deployed worker ticks every FLIP_WORKER_INTERVAL_S (10 s by default), "
        "which can add that much queue wait"
    )
    return {
        "time_to_first_step_s": round(value, 3),
        "first_step_import_floor_s": round(base, 3),
        "first_step_ratio": round(value / base, 3),
        "first_step": {**measured, "import_floor_runs_s": [round(t, 3) for t in floor], "tick_interval_s": TICK_S},
    }


# ------------------------------------------------------------------------------- (b) per-round overhead


def calibrate_epochs(app_dir: Path, round_seconds: float) -> tuple[int, float, int]:
    """Epochs of the benchmark's training that take about ``round_seconds`` on one thread, one epoch's time,
    and the model's number of parameters."""
    models = load_module(app_dir / "models.py", "flip_bench_models")
    client = load_module(app_dir / "client_app.py", "flip_bench_client_app")
    model = models.get_model()
    config = {**APP_CONFIG, "round": 1, "seed": 0, "trust": "AAA"}
    times = []
    for _ in range(2):
        started = time.perf_counter()
        client.train(model, config)
        times.append(time.perf_counter() - started)
    epoch_s = min(times)
    return max(1, round(round_seconds / epoch_s)), epoch_s, sum(p.numel() for p in model.parameters())


def local_loop(app_dir: Path, rounds: int, seed: int, epochs: int) -> dict[str, Any]:
    """The baseline: one local process calling train() ``rounds`` times (weights carried over)."""
    config = json.dumps({**APP_CONFIG, "epochs": epochs})
    argv = [sys.executable, "-c", LOCAL_LOOP_PY, str(app_dir), str(rounds), str(seed), config]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def flower_run(root: Path, app_dir: Path, rounds: int, seed: int, epochs: int, *, warm: bool) -> dict[str, Any]:
    """The same training through a Flower net (SuperLink, one SuperNode, FLIP's template); its timings.

    ``warm``: the SuperNode as FLIP's trusts run it (ClientApps forked from FLIP's preloaded executor);
    otherwise Flower's default (its SuperExec starts a new ``flwr-clientapp`` program per instruction).
    """
    root.mkdir(parents=True, exist_ok=True)
    tls = pki.create_tls(root / "pki")
    files = {p.name: p for p in app_dir.iterdir() if p.is_file() and p.suffix in (".py", ".json")}
    bundle = build_bundle(TEMPLATE_DIR, files, root / "flip-job")
    job_dir = root / "job"
    run_config = {
        "rounds": rounds,
        "selected": ["AAA"],
        "min_clients": 1,
        "round_timeout_s": 3600.0,
        "seed": seed,
        "final_evaluation": False,
        "report_file": str(job_dir / "report.jsonl"),
        "output_dir": str(job_dir / "out"),
        "bundle_sha256": bundle.sha256,
        "job_config": {"epochs": epochs},
    }
    with ExitStack() as stack:
        link = stack.enter_context(SuperLinkProcess(root / "superlink", tls=tls)).start()
        control = FlowerControl(link.control_address, root / "control", root_certificates=tls.ca_cert)
        key = pki.create_node_key(root / "keys", "AAA")
        control.register_supernode(key.public_key, "AAA")
        node = SuperNodeProcess(
            link.fleet_address, "AAA", root / "AAA", key=key, root_certificates=tls.ca_cert, env=ONE_THREAD, warm=warm
        )
        stack.enter_context(node).start()
        if warm:  # as at a trust, whose executor has long been ready when a job comes
            wait_for_log(node.workdir / "executor-AAA.log", "ready in", 120.0)
        submitted = time.time()
        run_id = control.submit(bundle.path, run_config)
        deadline = time.monotonic() + rounds * 600 + 300
        while True:
            events = read_report(job_dir / "report.jsonl")
            if events and events[-1].event in ("run_completed", "run_failed"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Flower run did not end: {control.status(run_id)}")
            time.sleep(0.5)
        status = control.wait(run_id, 120.0)
    if events[-1].event != "run_completed":
        raise RuntimeError(f"the Flower run failed: {events[-1]}")
    started = {e.round: at(e.at) for e in events if isinstance(e, RoundStarted) and e.phase == "train"}
    completed = {e.round: e for e in events if isinstance(e, RoundCompleted) and e.phase == "train"}
    stages = []
    for number in sorted(completed):
        m, ended = completed[number].metrics["AAA"], at(completed[number].at)
        stages.append(
            {
                # The SuperNode pulls the instruction and spawns a ClientApp process.
                "to_clientapp_process": m["process_started_at"] - started[number],
                # The ClientApp imports flwr, torch and FLIP, pulls the message (and the FAB in round 1), loads
                # the weights and calls the researcher's train().
                "clientapp_to_train": m["train_entered_at"] - m["process_started_at"],
                "train": m["train_s"],
                # The reply with the weights goes back, the ServerApp pulls it and averages.
                "train_to_round_completed": ended - m["train_entered_at"] - m["train_s"],
            }
        )
    return {
        "run_id": run_id,
        "status": f"{status.status}:{status.sub_status}",
        "seconds": [at(completed[r].at) - started[r] for r in sorted(completed)],
        "metrics": [completed[r].metrics["AAA"] for r in sorted(completed)],
        "stages": stages,
        "wall_s": at(events[-1].at) - submitted,
        "before_round_1_s": started[1] - submitted,
    }


def wait_for_log(path: Path, text: str, timeout_s: float) -> None:
    """Wait until ``text`` appears in the log file at ``path``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(encoding="utf-8", errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{path.name}: no {text!r} within {timeout_s:g} s")


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat (zeros where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s result with ``busy``: the share of the machine's CPU in use meanwhile (ours and others')."""
    before = cpu_ticks()
    result = run()
    after = cpu_ticks()
    total = after[1] - before[1]
    return {**result, "busy": (after[0] - before[0]) / total if total > 0 else float("nan")}


def _summary(platform: dict[str, Any], local: float, local_steady: float, rounds: int) -> dict[str, Any]:
    """One platform run's per-round figures against the local loop's round (and its rounds after the first)."""
    ours = statistics.mean(platform["seconds"])
    steady = statistics.mean(platform["seconds"][1:] or platform["seconds"])
    stages = {k: statistics.mean(st[k] for st in platform["stages"]) for k in platform["stages"][0]}
    overhead = ours - stages["train"]
    return {
        "ratio": round(ours / local, 3),
        "round_s": round(ours, 3),
        # Rounds after the first on both sides: neither pays first-use costs (the local loop imports
        # torch's lazy modules in its round 1; the platform installs the app bundle in its round 1).
        "steady_ratio": round(steady / local_steady, 3),
        "rounds_s": [round(s, 3) for s in platform["seconds"]],
        "wall_per_round_s": round(platform["wall_s"] / rounds, 3),
        "wall_ratio": round(platform["wall_s"] / rounds / local, 3),
        "outside_train_s": round(overhead, 3),
        "ratio_if_train_as_fast_as_local": round((local + overhead) / local, 3),
        "mean_stages_s": {k: round(v, 3) for k, v in stages.items()},
        "round_stages_s": [{k: round(v, 3) for k, v in st.items()} for st in platform["stages"]],
        "before_round_1_s": round(platform["before_round_1_s"], 3),
        "run": f"run {platform['run_id']} {platform['status']}",
    }


def round_overhead(args: argparse.Namespace, floor: list[float] | None) -> dict[str, Any]:
    """(b) One trust, compute-bound rounds: the Flower net's round, as FLIP runs it and as Flower does by
    default, against a local loop's."""
    with tempfile.TemporaryDirectory(prefix="flip-bench-rounds-") as tmp:
        root = Path(tmp)
        app_dir = root / "app"
        write_app(app_dir, APP_CONFIG)
        epochs, epoch_s, params = calibrate_epochs(app_dir, args.round_seconds)
        print(
            f"  workload: MLP 256-1024-1024-10 ({params:,} parameters), {APP_CONFIG['samples']} points, "
            f"{epochs} epochs per round ({epoch_s:.2f} s each), {args.rounds} rounds",
            flush=True,
        )
        runs = {}
        for name, run in (
            ("local before", lambda: local_loop(app_dir, args.rounds, args.seed, epochs)),
            ("FLIP", lambda: flower_run(root / "warm", app_dir, args.rounds, args.seed, epochs, warm=True)),
            ("Flower default", lambda: flower_run(root / "cold", app_dir, args.rounds, args.seed, epochs, warm=False)),
            ("local after", lambda: local_loop(app_dir, args.rounds, args.seed, epochs)),
        ):
            runs[name] = busy(run)
            seconds = runs[name]["seconds"]
            shown = ", ".join(f"{s:.1f}" for s in seconds)
            print(f"  {name}: {shown} s per round; machine {runs[name]['busy']:.0%} busy", flush=True)
    before, after = runs["local before"], runs["local after"]
    floor = floor or import_floor_s()
    local = statistics.mean(before["seconds"] + after["seconds"])
    local_steady = statistics.mean(before["seconds"][1:] + after["seconds"][1:] or before["seconds"] + after["seconds"])
    ours = _summary(runs["FLIP"], local, local_steady, args.rounds)
    default = _summary(runs["Flower default"], local, local_steady, args.rounds)
    same = max(
        abs(a["loss"] - b["loss"])
        for platform in (runs["FLIP"], runs["Flower default"])
        for a, b in zip(before["metrics"], platform["metrics"], strict=True)
    )
    verdict = "met" if ours["ratio"] <= 1.10 else "not met"
    print(f"round (local loop, one process): {local:.2f} s (1.00x vs local)")
    print(
        f"round (FLIP's SuperNode, round_started → round_completed): {ours['round_s']:.2f} s "
        f"({ours['ratio']:.2f}x vs local; target 1.10x: {verdict})"
    )
    print(
        f"round (Flower's default SuperNode, a new ClientApp program per round): {default['round_s']:.2f} s "
        f"({default['ratio']:.2f}x vs local)"
    )
    print(
        f"rounds after the first (local {local_steady:.2f} s): FLIP's SuperNode {ours['steady_ratio']:.2f}x, "
        f"Flower's default {default['steady_ratio']:.2f}x vs local"
    )
    print(
        f"round (FLIP's SuperNode, submit → run_completed / {args.rounds}): {ours['wall_per_round_s']:.2f} s "
        f"({ours['wall_ratio']:.2f}x vs local)"
    )
    for label, summary in (("FLIP", ours), ("Flower default", default)):
        print(
            f"  {label}: {summary['outside_train_s']:.2f} s per round outside train() "
            f"({summary['ratio_if_train_as_fast_as_local']:.2f}x if train() ran as fast as locally); mean round: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in summary["mean_stages_s"].items())
        )
    print(
        f"  Flower's default starts a ClientApp program per round (import floor of torch + flwr: "
        f"{statistics.median(floor):.2f} s, then torch's lazy imports); FLIP's trusts fork each ClientApp from "
        "an executor that imported them once. Round 1 also installs the app bundle (FAB). The net's SuperLink, "
        f"SuperNode and ServerApp share the cores with the training. Same training: train loss differs by at "
        f"most {same:.1e} between local and platform"
    )
    return {
        "round_overhead_ratio": ours["ratio"],
        "round_overhead": {
            "rounds": args.rounds,
            "epochs_per_round": epochs,
            "epoch_s": round(epoch_s, 3),
            "parameters": params,
            "local_round_s": round(local, 3),
            "local_steady_round_s": round(local_steady, 3),
            "steady_round_overhead_ratio": ours["steady_ratio"],
            "local_rounds_s": {
                "before": [round(s, 3) for s in before["seconds"]],
                "after": [round(s, 3) for s in after["seconds"]],
            },
            "target_ratio": 1.10,
            "target_met": ours["ratio"] <= 1.10,
            "platform": ours,
            "flower_default_ratio": default["ratio"],
            "flower_default": default,
            "machine_busy_share": {name: round(r["busy"], 3) for name, r in runs.items()},
            "platform_run": "a Flower net used directly (SuperLink + 1 SuperNode, TLS, final_evaluation off): "
            "FLIP's SuperNode (process isolation, ClientApps forked from the preloaded executor) and Flower's "
            "default (subprocess isolation, flwr-clientapp started per instruction)",
            "max_train_loss_difference": same,
            "import_floor_s": round(statistics.median(floor), 3),
        },
    }


# ----------------------------------------------------------------------------------- (c) federated quality


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC: how far apart two AUCs must be to mean anything."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return float(np.sqrt(max(variance, 0.0) / (positives * negatives)))


def tutorial_config(seed: int) -> dict[str, Any]:
    return {**json.loads((TABULAR / "config.json").read_text()), "seed": seed, "job_type": "standard"}


def train_rounds(
    sites: list[tuple[str, Path]], rounds: int, config: dict[str, Any], client: ModuleType, models: ModuleType
) -> dict[str, torch.Tensor]:
    """FedAvg over ``sites`` for ``rounds`` rounds, each site's step run as FLIP's ClientApp runs it (a single
    site: that site trained alone, the weights carried from round to round)."""
    seed = int(config["seed"])
    seed_everything(seed)
    state = models.get_model().state_dict()
    for number in range(1, rounds + 1):
        updates = []
        for code, csv in sites:
            flip.local_dev(csv, trust=code)
            seed_everything(seed * 1000 + number)
            model = models.get_model()
            model.load_state_dict(state)
            metrics = client.train(model, {**config, "round": number, "trust": code})
            updates.append(Update([t.detach().numpy() for t in model.state_dict().values()], metrics["num_examples"]))
        averaged = fedavg(updates)
        state = {name: torch.from_numpy(array) for name, array in zip(state, averaged, strict=True)}
    flip.context.reset()
    return state


def pooled_training_csv(sites: dict[str, Path], config: dict[str, Any], client: ModuleType, out: Path) -> int:
    """Every trust's training rows in one CSV, each trust's measurements standardised with its own training
    statistics (what each trust does before it trains); returns the number of rows."""
    frames = []
    for index, csv in enumerate(sites.values()):
        training, _ = client.split(pd.read_csv(csv), float(config["held_out_fraction"]))
        measured = client.raw_features(training)[client.MEASURED]
        mean, std = measured.mean(), measured.std().fillna(1.0).replace(0.0, 1.0)
        rows = training.copy()
        rows[client.MEASURED] = (measured - mean) / std
        rows["person_id"] = rows["person_id"] + (index + 1) * 10_000_000  # unique across trusts
        frames.append(rows)
    pooled = pd.concat(frames, ignore_index=True)
    pooled.to_csv(out, index=False)
    return len(pooled)


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """(c) The tabular tutorial: FedAvg over three trusts vs central vs each trust alone, one pooled held-out AUC."""
    started = time.perf_counter()
    client = load_module(TABULAR / "client_app.py", "flip_bench_tabular_client_app")
    models = load_module(TABULAR / "models.py", "flip_bench_tabular_models")
    maker = load_module(MAKE_DEV_DATA, "flip_bench_make_dev_data")
    config = tutorial_config(args.seed)
    with tempfile.TemporaryDirectory(prefix="flip-bench-tabular-") as tmp:
        sites = {}
        for name in QUALITY_TRUSTS:
            sites[name] = Path(tmp) / f"{name}.csv"
            rows = maker.tabular_rows(get_profile(name), args.persons, args.data_seed)
            maker.write_csv(sites[name], maker.TABULAR_COLUMNS, rows)
        # The held-out rows of every trust, standardised by that trust (as each site would score the model).
        held_out = {}
        for name, csv in sites.items():
            flip.local_dev(csv, trust=name)
            held_out[name] = client.data(config, held_out=True)
        flip.context.reset()
        pooled_csv = Path(tmp) / "pooled.csv"
        pooled_rows = pooled_training_csv(sites, config, client, pooled_csv)
        # The pooled file holds training rows only: the tutorial's own split keeps back one row per class.
        central_config = {**config, "held_out_fraction": 0.0}

        def auc(state: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
            model = models.get_model()
            model.load_state_dict(state)
            model.eval()
            with torch.no_grad():
                scores = {name: model(x).squeeze(1).numpy() for name, (x, _) in held_out.items()}
            labels = {name: y.numpy() for name, (_, y) in held_out.items()}
            pooled = client.roc_auc(np.concatenate(list(labels.values())), np.concatenate(list(scores.values())))
            return pooled, {name: client.roc_auc(labels[name], scores[name]) for name in held_out}

        federated, federated_sites = auc(train_rounds(list(sites.items()), args.fed_rounds, config, client, models))
        central, central_sites = auc(
            train_rounds([("POOLED", pooled_csv)], args.fed_rounds, central_config, client, models)
        )
        singles = [auc(train_rounds([(n, p)], args.fed_rounds, config, client, models)) for n, p in sites.items()]
    seconds = time.perf_counter() - started
    ratio = federated / central
    best_single = max(s for s, _ in singles)
    held = {name: len(y) for name, (_, y) in held_out.items()}
    positives = {name: int(y.sum()) for name, (_, y) in held_out.items()}
    error = auc_standard_error(central, sum(positives.values()), sum(held.values()) - sum(positives.values()))
    print(f"central AUC (pooled training rows): {central:.3f} (1.00x vs central; standard error {error:.3f})")
    verdict = "met" if ratio >= 0.95 else "not met"
    print(
        f"federated AUC (FedAvg, {len(sites)} trusts): {federated:.3f} "
        f"({ratio:.3f}x vs central; target 0.95x: {verdict})"
    )
    for name, (value, _) in zip(sites, singles, strict=True):
        print(f"single-trust AUC ({name} alone): {value:.3f} ({value / central:.3f}x vs central)")
    beats = "yes" if federated > best_single else "no"
    print(
        f"  federated beats every single trust: {beats}; {args.fed_rounds} rounds × {config['local_epochs']} local "
        f"epochs; scored on the union of every trust's held-out rows ({sum(held.values())} persons, "
        f"{sum(positives.values())} with type 2 diabetes); {seconds:.1f} s"
    )
    return {
        "federated_metric": round(federated, 4),
        "central_metric": round(central, 4),
        "single_trust_metrics": [round(s, 4) for s, _ in singles],
        "single_trust_names": list(sites),
        "quality": {
            "metric": "ROC AUC on the union of every trust's held-out rows (each trust's rows standardised by it)",
            "federated_over_central": round(ratio, 4),
            "target_ratio": 0.95,
            "target_met": ratio >= 0.95,
            "federated_beats_every_single_trust": federated > best_single,
            "rounds": args.fed_rounds,
            "local_epochs": config["local_epochs"],
            "persons_per_trust": args.persons,
            "data_seed": args.data_seed,
            "seed": args.seed,
            "held_out_persons": held,
            "held_out_positives": positives,
            "central_auc_standard_error": round(error, 4),
            "pooled_training_rows": pooled_rows,
            "per_trust_auc": {
                "federated": {k: round(v, 4) for k, v in federated_sites.items()},
                "central": {k: round(v, 4) for k, v in central_sites.items()},
                **{
                    f"{name} alone": {k: round(v, 4) for k, v in per.items()}
                    for name, (_, per) in zip(sites, singles, strict=True)
                },
            },
            "seconds": round(seconds, 2),
        },
    }


# -------------------------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in ("torch", "flwr", "numpy", "pandas", "fastapi", "uvicorn"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--trusts", type=int, default=2, help="first_step: trusts selected for the job (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="first_step: jobs run one after another (default 2)")
    parser.add_argument("--round-seconds", type=float, default=30.0, help="round_overhead: training per round (30)")
    parser.add_argument("--rounds", type=int, default=3, help="round_overhead: rounds (default 3)")
    parser.add_argument("--fed-rounds", type=int, default=5, help="quality: FedAvg rounds (default 5)")
    parser.add_argument("--persons", type=int, default=2000, help="quality: synthetic persons per trust (2000)")
    parser.add_argument("--data-seed", type=int, default=7, help="quality: synthetic data seed (default 7)")
    parser.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        sys.exit(f"--only takes {', '.join(PARTS)}; not {', '.join(unknown) or 'nothing'}")
    if min(args.trusts, args.jobs, args.rounds, args.fed_rounds) < 1 or args.round_seconds <= 0 or args.persons < 50:
        sys.exit(
            "--trusts, --jobs, --rounds and --fed-rounds must be at least 1, --round-seconds positive, --persons 50+"
        )
    torch.set_num_threads(1)
    os.environ.update(ONE_THREAD)  # inherited by every process started from here

    started = time.perf_counter()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; torch on 1 thread per process", flush=True)
    out: dict[str, Any] = {}
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "first_step": lambda: first_step(args),
        "round_overhead": lambda: round_overhead(args, out.get("first_step", {}).get("import_floor_runs_s")),
        "quality": lambda: quality(args),
    }
    for part in PARTS:
        if part in parts:
            print(f"[{part}]", flush=True)
            out.update(runs[part]())
    out["bench_seconds"] = round(time.perf_counter() - started, 1)
    out["machine"] = {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2), **versions()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"bench: {out['bench_seconds']:.0f} s")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
