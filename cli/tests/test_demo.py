"""``flip demo``: the phase runner, and the full walkthrough as a real process (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from flip_cli.demo.command import run_phases
from flip_cli.demo.context import DemoContext, Phase, PhaseResult
from flip_cli.demo.errors import DemoError

DEMO_TIMEOUT_S = 600


def _ok_phase(ctx: DemoContext) -> PhaseResult:
    return {"answer": 42}


def _failing_phase(ctx: DemoContext) -> PhaseResult:
    raise DemoError("the hub said no")


def _crashing_phase(ctx: DemoContext) -> PhaseResult:
    raise RuntimeError("boom")


def test_runner_records_ok_failed_and_skipped(tmp_path: Path) -> None:
    summary: dict[str, object] = {}
    phases = [
        Phase("first", "First", _ok_phase),
        Phase("second", "Second", _failing_phase),
        Phase("third", "", _ok_phase),
    ]
    with ExitStack() as stack:
        ok = run_phases(DemoContext(state_dir=tmp_path, requested_port=None, stack=stack), phases, summary)

    assert ok is False
    assert summary["first"] == {"status": "ok", "answer": 42, "duration_s": pytest.approx(0, abs=1)}
    assert summary["second"] == {"status": "failed", "error": "the hub said no", "duration_s": pytest.approx(0, abs=1)}
    assert summary["third"] == {"status": "skipped"}


def test_runner_reports_unexpected_errors_with_a_saved_traceback(tmp_path: Path) -> None:
    summary: dict[str, dict[str, object]] = {}
    with ExitStack() as stack:
        ok = run_phases(
            DemoContext(state_dir=tmp_path, requested_port=None, stack=stack),
            [Phase("only", "Only", _crashing_phase)],
            summary,
        )

    assert ok is False
    assert summary["only"]["error"] == "RuntimeError: boom"
    assert "RuntimeError: boom" in (tmp_path / "logs" / "demo-error.log").read_text()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state dir outside pytest's basetemp: as root, embedded PostgreSQL runs as another user and must
    traverse every parent directory, and pytest keeps its own basetemp private (0700)."""
    path = Path(tempfile.mkdtemp(prefix="flip-demo-test-"))
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def _demo_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DATABASE_URL", "FLIP_DATABASE_URL", "FLIP_STATE_DIR", "FLIP_HUB_PORT"):
        env.pop(name, None)  # the demo must run on embedded defaults, not on the test server
    return env


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_demo_runs_end_to_end_and_stops_everything(tmp_path: Path, state_dir: Path) -> None:
    summary_path = tmp_path / "summary.json"
    command = [sys.executable, "-m", "flip_cli.main", "demo", "--exit-when-done", "--summary", str(summary_path)]
    done = subprocess.run(
        [*command, "--state-dir", str(state_dir)],
        env=_demo_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "ok"
    assert summary["project"]["status"] == "ok"
    assert summary["project"]["project_status"] == "APPROVED"
    assert {(d["trust"], d["decided_as"]) for d in summary["project"]["decisions"]} == {
        ("ELSE", "SITE"),
        ("RIVR", "HUB"),
    }
    assert summary["trusts"]["status"] == "ok"
    assert summary["trusts"]["registered"] == ["ELSE", "RIVR", "HILL"]
    assert summary["trusts"]["whoami_ok"] is True
    assert summary["data"]["status"] == "ok"
    assert {code: t["persons"] for code, t in summary["data"]["trusts"].items()} == {
        "ELSE": 4000,
        "RIVR": 3000,
        "HILL": 120,
    }
    assert summary["cohort"]["status"] == "ok"
    states = {code: r["state"] for code, r in summary["cohort"]["results"].items()}
    assert states == {"ELSE": "done", "RIVR": "done", "HILL": "suppressed"}
    assert summary["cohort"]["results"]["HILL"]["record_count"] == {"value": None, "suppressed": True}
    released = [summary["cohort"]["results"][code]["record_count"]["value"] for code in ("ELSE", "RIVR")]
    assert summary["cohort"]["total"] == sum(released)
    assert set(summary["project"]["snapshots"]) == {"ELSE", "RIVR"}
    assert all(len(s["sha256"]) == 64 for s in summary["project"]["snapshots"].values())
    assert summary["link"]["status"] == "ok"
    for code in ("ELSE", "RIVR", "HILL"):
        ping = summary["link"]["pings"][code]
        assert ping["echo"] == f"hello {code}"
        assert ping["trust_status"] == "online"
    imaging = summary["imaging"]
    assert imaging["status"] == "ok"
    assert set(imaging["trusts"]) == {"ELSE", "RIVR"}
    for code, trust in imaging["trusts"].items():
        assert trust["k"] >= 10
        ready = trust["by_state"]["READY"]
        assert ready["suppressed"] is False, code
        assert ready["value"] >= 10, code
    assert imaging["trainer_fetch"]["bytes"] > 0
    assert {code: t["imaging"]["studies"] > 0 for code, t in summary["data"]["trusts"].items()} == {
        "ELSE": True,
        "RIVR": True,
        "HILL": True,
    }
    models = summary["models"]
    assert models["status"] == "ok"
    assert models["missing_files"] == []
    assert models["files"] == {
        "client_app.py": "CLEAN",
        "models.py": "CLEAN",
        "config.json": "CLEAN",
        "checkpoint.pt": "BLOCKED",
    }
    assert models["job"] == {"queued_position": 1, "trusts": 2, "final": "STOPPED"}
    training = summary["training"]
    assert training["status"] == "ok", (training, done.stdout[-4000:])
    assert training["job_status"] == "RESULTS_UPLOADED"
    assert [(r["round"], r["phase"]) for r in training["rounds"]] == [
        (1, "train"),
        (2, "train"),
        (3, "train"),
        (3, "evaluate"),
    ]
    for entry in training["rounds"]:
        assert set(entry["metrics"]) == {"ELSE", "RIVR"}  # HILL is connected to the net but never selected
    assert training["unselected_trust_apps"] == 0
    assert all(0.0 <= dice <= 1.0 for dice in training["final_dice"].values())
    assert training["lineage"]["selected_trusts"] == ["ELSE", "RIVR"]
    assert training["lineage"]["cohort_snapshots"] == ["ELSE", "RIVR"]
    assert len(training["lineage"]["bundle_sha256"]) == 64
    assert summary["audit"]["chain_ok"] is True
    assert summary["audit"]["entries"] > 0
    for code in ("ELSE", "RIVR", "HILL"):
        assert stat.S_IMODE((state_dir / "kits" / f"{code}.env").stat().st_mode) == 0o600
    assert _gone(summary["hub"]["pid"])
    assert _processes_mentioning(str(state_dir)) == []


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 120)
def test_a_demo_stopped_mid_training_stops_every_child(tmp_path: Path, state_dir: Path) -> None:
    """SIGTERM while a Flower run is training: the hub, the trusts' services and agents, the FL net and every
    SuperNode and ClientApp they started must all go (the demo reports the interruption and exits 1)."""
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "flip_cli.main", "demo", "--state-dir", str(state_dir)],
            env=_demo_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + DEMO_TIMEOUT_S
            while "job running" not in log.read_text() and demo.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert demo.poll() is None, log.read_text()
            assert "job running" in log.read_text(), log.read_text()
            net = _processes_mentioning(str(state_dir / "fl-net"))
            assert net, "the FL net should be running"
            demo.send_signal(signal.SIGTERM)
            returncode = demo.wait(120)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()

    output = log.read_text()
    assert returncode == 1, output
    assert "interrupted (SIGTERM)" in output
    hub_pid = re.search(r"hub starting \(pid (\d+)", output)
    assert hub_pid, output
    assert _gone(int(hub_pid.group(1)))
    assert _processes_mentioning(str(state_dir)) == []
