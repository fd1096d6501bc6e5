"""FLIP jobs on a real Flower net: one SuperLink (TLS, node authentication) and SuperNodes AAA, BBB, CCC.

The net is started once for the module. CCC stays connected throughout and is never selected, so it
must never receive anything: no marker from the researcher's code, no installed app, no run in its
log. The researcher app (``researcher/``) trains a small MLP on synthetic points made from the seed
and the trust code, and appends a line to ``<marker_dir>/<trust>`` on every call.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from flip_fl.flower import pki
from flip_fl.flower.bundle import TEMPLATE_DIR, Bundle, build_bundle
from flip_fl.flower.events import RoundCompleted, RunEvent, RunFailed, TrustDropped, read_report
from flip_fl.flower.executor import Executor
from flip_fl.flower.net import FlowerControl, FlowerError, RunStatus, SuperLinkProcess, SuperNodeProcess
from flip_fl.flower.proctree import descendants, is_alive

pytestmark = pytest.mark.slow

RESEARCHER = Path(__file__).parent / "researcher"
TRUSTS = ("AAA", "BBB", "CCC")
# Torch on one thread: the machine is small and several trusts train at once.
NODE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Net:
    root: Path
    link: SuperLinkProcess
    control: FlowerControl
    nodes: dict[str, SuperNodeProcess]
    bundle: Bundle


@dataclass
class Job:
    run_id: int
    directory: Path
    submitted_at: float

    @property
    def report(self) -> Path:
        return self.directory / "report.jsonl"

    @property
    def markers(self) -> Path:
        return self.directory / "markers"

    @property
    def output(self) -> Path:
        return self.directory / "out"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("flower-net")
    tls = pki.create_tls(root / "pki")
    with ExitStack() as stack:
        link = stack.enter_context(SuperLinkProcess(root / "superlink", tls=tls)).start()
        control = FlowerControl(link.control_address, root / "control", root_certificates=tls.ca_cert)
        nodes: dict[str, SuperNodeProcess] = {}
        for code in TRUSTS:
            key = pki.create_node_key(root / "keys", code)
            control.register_supernode(key.public_key, code)
            # AAA runs Flower's default SuperNode (a new flwr-clientapp program per instruction), BBB and
            # CCC FLIP's (ClientApps forked from the preloaded executor): jobs must not tell them apart.
            node = SuperNodeProcess(
                link.fleet_address,
                code,
                root / code,
                key=key,
                root_certificates=tls.ca_cert,
                env=NODE_ENV,
                warm=code != "AAA",
            )
            nodes[code] = stack.enter_context(node).start(wait=False)
        for node in nodes.values():
            node.wait_ready()
        files = {p.name: p for p in RESEARCHER.iterdir() if p.is_file()}
        bundle = build_bundle(TEMPLATE_DIR, files, root / "flip-job")
        started = [p for p in (link.pid, *(n.pid for n in nodes.values())) if p is not None]
        yield Net(root, link, control, nodes, bundle)
        # Everything the net started (SuperExecs, ServerApps, ClientApps) must go when it is stopped.
        tree = [pid for root_pid in started for pid in [root_pid, *descendants(root_pid)]]
    assert not [pid for pid in tree if is_alive(pid)]


def submit(net: Net, name: str, **config: Any) -> Job:
    directory = net.root / "jobs" / name
    job_config = {"marker_dir": str(directory / "markers"), **config.pop("job_config", {})}
    run_config = {
        "rounds": 2,
        "round_timeout_s": 90.0,
        "seed": 7,
        "final_evaluation": False,
        "report_file": str(directory / "report.jsonl"),
        "output_dir": str(directory / "out"),
        "bundle_sha256": net.bundle.sha256,
        "job_config": job_config,
        **config,
    }
    started = time.monotonic()
    return Job(net.control.submit(net.bundle.path, run_config), directory, started)


def finish(net: Net, job: Job, timeout_s: float = 240.0) -> tuple[list[RunEvent], RunStatus]:
    """Wait for the run's last event in its report (cheap), then for Flower's final status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = read_report(job.report)
        if events and events[-1].event in ("run_completed", "run_failed"):
            return events, net.control.wait(job.run_id, 60.0)
        time.sleep(0.5)
    raise AssertionError(f"run {job.run_id} did not end within {timeout_s}s: {net.control.status(job.run_id)}")


def rounds(events: list[RunEvent], phase: str = "train") -> list[RoundCompleted]:
    return [e for e in events if isinstance(e, RoundCompleted) and e.phase == phase]


def drops(events: list[RunEvent]) -> list[TrustDropped]:
    return [e for e in events if isinstance(e, TrustDropped)]


@pytest.fixture(scope="module")
def jobs(net: Net) -> dict[str, Job]:
    """The independent runs, submitted together so that they overlap (each test then waits for its own)."""
    fail_aaa = {"job_config": {"fail_trusts": ["AAA"]}, "rounds": 1}
    return {
        "selected": submit(net, "selected", selected=["AAA", "BBB"], min_clients=2),
        "single": submit(net, "single", selected=["AAA"], min_clients=1, rounds=1, final_evaluation=True),
        "fail-two-of-two": submit(net, "fail-two-of-two", selected=["AAA", "BBB"], min_clients=2, **fail_aaa),
        "fail-one-of-two": submit(net, "fail-one-of-two", selected=["AAA", "BBB"], min_clients=1, **fail_aaa),
        "evaluation": submit(
            net,
            "evaluation",
            selected=["BBB"],
            min_clients=1,
            job_type="evaluation",
            checkpoint_path=str(_checkpoint(net.root / "checkpoint.pt")),
        ),
        # Long enough to be stopped while it runs.
        "stop": submit(net, "stop", selected=["BBB"], min_clients=1, rounds=50),
    }


def _researcher_model() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("researcher_models", RESEARCHER / "models.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model: torch.nn.Module = module.get_model()
    return model


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(123)
    torch.save(_researcher_model().state_dict(), path)
    return path


def test_stop_stops_a_running_job(net: Net, jobs: dict[str, Job]) -> None:
    job = jobs["stop"]
    deadline = time.monotonic() + 120
    while not any(e.event == "round_started" for e in read_report(job.report)):
        assert time.monotonic() < deadline, "the run never started a round"
        time.sleep(0.5)
    net.control.stop(job.run_id)
    status = net.control.wait(job.run_id, 60.0)
    assert (status.status, status.sub_status) == ("finished", "stopped")
    assert not any(e.event == "run_completed" for e in read_report(job.report))


@pytest.fixture(scope="module")
def selected_run(net: Net, jobs: dict[str, Job]) -> tuple[Job, list[RunEvent], RunStatus]:
    job = jobs["selected"]
    events, status = finish(net, job)
    return job, events, status


def test_only_the_selected_trusts_take_part(net: Net, selected_run: tuple[Job, list[RunEvent], RunStatus]) -> None:
    job, events, status = selected_run
    assert status.sub_status == "completed", status
    assert events[0].event == "run_started"
    assert events[-1].event == "run_completed"
    trained = rounds(events)
    assert [r.round for r in trained] == [1, 2]
    for completed in trained:
        assert set(completed.metrics) == {"AAA", "BBB"}
        assert completed.aggregated["num_examples"] == 600
        assert 0.0 <= completed.aggregated["accuracy"] <= 1.0
    assert not drops(events)
    assert "CCC" not in job.report.read_text()
    # The researcher's code ran at AAA and BBB, for both rounds, and never at CCC.
    assert (job.markers / "AAA").read_text().splitlines() == ["train round=1", "train round=2"]
    assert (job.markers / "BBB").exists()
    assert not (job.markers / "CCC").exists()
    # CCC's SuperNode never received a message (no run in this module selects it): no app, no run in its log.
    ccc = net.nodes["CCC"]
    assert not (ccc.flwr_home / "apps").exists()
    assert "[RUN" not in ccc.log_path.read_text()
    assert f"[RUN {job.run_id}" in net.nodes["AAA"].log_path.read_text()
    # BBB's ClientApps were forked from its executor and ended cleanly; CCC's executor never got a task.
    bbb_log, ccc_log = net.nodes["BBB"].executor_log_path, ccc.executor_log_path
    assert bbb_log is not None
    assert ccc_log is not None
    assert "(forked)" in bbb_log.read_text()
    assert "ended with 0" in bbb_log.read_text()
    assert "task started" not in ccc_log.read_text()
    assert net.nodes["AAA"].executor_log_path is None


def test_the_final_model_and_its_lineage_are_saved(selected_run: tuple[Job, list[RunEvent], RunStatus]) -> None:
    job, events, _ = selected_run
    _researcher_model().load_state_dict(torch.load(job.output / "model.pt", weights_only=True))
    lineage = json.loads((job.output / "lineage.json").read_text())
    assert lineage["selected_trusts"] == ["AAA", "BBB"]
    assert lineage["rounds"] == lineage["rounds_completed"] == 2
    assert lineage["seed"] == 7
    assert lineage["strategy"] == "fedavg"
    assert lineage["run_id"] == job.run_id
    assert set(lineage["versions"]) == {"flwr", "torch", "numpy", "python"}
    assert lineage["versions"]["flwr"] == "1.41.0"
    assert len(lineage["bundle_sha256"]) == 64
    assert [m["round"] for m in lineage["metrics"] if m["phase"] == "train"] == [1, 2]
    completed = events[-1]
    assert completed.event == "run_completed"
    assert completed.model_sha256 == lineage["model"]["sha256"]


def test_a_single_trust_job_runs(net: Net, jobs: dict[str, Job]) -> None:
    job = jobs["single"]
    events, status = finish(net, job)
    assert status.sub_status == "completed", status
    assert [set(r.metrics) for r in rounds(events)] == [{"AAA"}]
    # The final model was evaluated at the trust too.
    assert [set(r.metrics) for r in rounds(events, "evaluate")] == [{"AAA"}]
    assert (job.markers / "AAA").read_text().splitlines() == ["train round=1", "evaluate round=1"]
    assert (job.output / "model.pt").exists()
    assert not (job.markers / "BBB").exists()


def test_a_failing_trainer_fails_the_run_when_too_few_trusts_remain(net: Net, jobs: dict[str, Job]) -> None:
    job = jobs["fail-two-of-two"]
    events, status = finish(net, job)
    assert status.sub_status == "failed", status
    failed = events[-1]
    assert isinstance(failed, RunFailed)
    assert failed.reason == "round 1 (train): 1 of 2 selected trusts returned a result; min_clients is 2"
    assert [(d.trust, d.reason) for d in drops(events)] == [("AAA", "train raised RuntimeError")]
    # No hang: the round ended when the replies were in, well within round_timeout_s.
    started = next(e for e in events if e.event == "round_started")
    assert _seconds_between(started.at, failed.at) < 90.0
    # Only the exception's type leaves the trust, never its message (it could quote data).
    assert "1234567890" not in job.report.read_text() + status.details
    assert not rounds(events)


def test_a_failing_trainer_is_dropped_when_min_clients_allows(net: Net, jobs: dict[str, Job]) -> None:
    job = jobs["fail-one-of-two"]
    events, status = finish(net, job)
    assert status.sub_status == "completed", status
    assert [set(r.metrics) for r in rounds(events)] == [{"BBB"}]
    assert [(d.round, d.trust, d.reason) for d in drops(events)] == [(1, "AAA", "train raised RuntimeError")]


def test_an_evaluation_job_evaluates_the_uploaded_checkpoint(net: Net, jobs: dict[str, Job]) -> None:
    job = jobs["evaluation"]
    events, status = finish(net, job)
    assert status.sub_status == "completed", status
    assert not rounds(events)
    [evaluated] = rounds(events, "evaluate")
    assert set(evaluated.metrics) == {"BBB"}
    assert (job.markers / "BBB").read_text().splitlines() == ["evaluate round=1"]
    # The model the trusts evaluated, and the one saved, is the checkpoint.
    saved = torch.load(job.output / "model.pt", weights_only=True)
    for name, tensor in torch.load(net.root / "checkpoint.pt", weights_only=True).items():
        torch.testing.assert_close(saved[name], tensor)


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_cli_failures_raise_flower_errors(net: Net) -> None:
    with pytest.raises(FlowerError, match="not_a_template_key"):
        net.control.submit(net.bundle.path, {"not_a_template_key": 1})
    with pytest.raises(FlowerError, match=r"^flwr stop: .*\S"):
        net.control.stop(12345)


def test_a_trust_whose_clientapp_dies_mid_round_is_dropped_and_its_node_keeps_working(net: Net) -> None:
    # BBB's ClientApp (forked from its executor) dies inside train(): no reply, no exception.
    dies = submit(
        net,
        "dies",
        selected=["AAA", "BBB"],
        min_clients=1,
        rounds=1,
        round_timeout_s=20.0,
        job_config={"exit_trusts": ["BBB"]},
    )
    events, status = finish(net, dies)
    assert status.sub_status == "completed", status
    assert [set(r.metrics) for r in rounds(events)] == [{"AAA"}]
    [dropped] = drops(events)
    assert (dropped.round, dropped.trust) == (1, "BBB")
    assert dropped.reason
    # The dead process wedges nothing: BBB's SuperNode takes the next job and completes it.
    after = submit(net, "after-death", selected=["BBB"], min_clients=1, rounds=1)
    events, status = finish(net, after)
    assert status.sub_status == "completed", status
    assert [set(r.metrics) for r in rounds(events)] == [{"BBB"}]


def test_only_its_own_executor_may_claim_a_warm_supernodes_tasks(net: Net) -> None:
    # A task carries the global model: the SuperNode hands it out only to calls signed with the secret it
    # shares with its executor, so another local process that finds the loopback port gets nothing.
    bbb = net.nodes["BBB"]
    address = f"127.0.0.1:{bbb.runtime_port}"
    for secret in (None, b"not the secret"):
        with pytest.raises(httpx.HTTPStatusError) as refused:
            Executor(address, auth_secret=secret).acquire()
        assert refused.value.response.status_code in (401, 403)
    assert (bbb.workdir / "superexec.secret").stat().st_mode & 0o077 == 0
    # An executor started with another secret says so and exits (its supervisor then restarts the pair).
    wrong = net.root / "wrong.secret"
    wrong.write_bytes(b"not the secret")
    argv = ["--runtime-api-address", address, "--auth-secret-file", str(wrong), "--no-fork"]
    done = subprocess.run(
        [sys.executable, "-m", "flip_fl.flower.executor", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "the SuperNode refuses this executor" in done.stderr
