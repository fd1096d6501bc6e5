"""The agent's FL clients against a real SuperLink: join, what the SuperNode inherits, restart, stop.

Training itself through these clients is tested end to end in flip-api/tests/api/routes/test_fl_runs.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flip_fl.flower import pki
from flip_fl.flower.net import FlowerControl, SuperLinkProcess
from flip_fl.flower.proctree import descendants, is_alive
from flip_trust_api.fl_client import FlClients, TrainerEnvironment
from flip_trust_api.fl_protocol import FlNetInfo

pytestmark = pytest.mark.slow


@pytest.fixture
def link(tmp_path: Path) -> Iterator[tuple[SuperLinkProcess, FlowerControl, pki.TlsFiles]]:
    tls = pki.create_tls(tmp_path / "pki")
    with SuperLinkProcess(tmp_path / "superlink", tls=tls) as superlink:
        superlink.start()
        yield (
            superlink,
            FlowerControl(superlink.control_address, tmp_path / "control", root_certificates=tls.ca_cert),
            tls,
        )


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


def _wait(check: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.2)


def test_a_supernode_joins_keeps_secrets_out_is_restarted_and_stopped(
    link: tuple[SuperLinkProcess, FlowerControl, pki.TlsFiles], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    superlink, control, tls = link
    monkeypatch.setenv("FLIP_AGENT_HUB_KEY", "agent-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://agent@db/omop")
    trainer = TrainerEnvironment("http://127.0.0.1:1/data", None, "trainer-key", tmp_path / "cache")
    clients = FlClients("AAA", tmp_path / "agent", trainer)
    control.register_supernode(clients.key.public_key, "AAA")
    net = FlNetInfo(
        name="net-1", backend="FLOWER", fleet_address=superlink.fleet_address, ca_cert=tls.ca_cert.read_text()
    )
    try:
        clients.reconcile([net])
        first = clients.nodes["net-1"].process
        first.wait_ready()
        assert first.pid is not None
        executor_log = first.executor_log_path
        assert executor_log is not None
        _wait(lambda: "ready in" in executor_log.read_text(), "ready executor")
        [executor] = [pid for pid in descendants(os.getpid()) if "flip_fl.flower.executor" in _cmdline(pid)]
        # The SuperNode and the executor (and so every ClientApp) get the trainer's settings, not the agent's.
        for pid in (first.pid, executor):
            env = _environ(pid)
            assert env["FLIP_TRAINER_KEY"] == "trainer-key"
            assert env["FLIP_DATA_ACCESS_URL"] == "http://127.0.0.1:1/data"
            assert "FLIP_AGENT_HUB_KEY" not in env
            assert "DATABASE_URL" not in env

        # The executor dies: the pair counts as down, and the next pass (after the backoff) restarts both.
        os.kill(executor, signal.SIGKILL)
        _wait(lambda: not first.running, "executor death noticed")
        _wait(lambda: time.monotonic() >= clients.nodes["net-1"].next_start, "end of the backoff", 10.0)
        clients.reconcile([net])
        second = clients.nodes["net-1"].process
        assert second is not first
        assert clients.nodes["net-1"].restarts == 1
        assert not is_alive(first.pid)  # the old SuperNode went with its executor
        second.wait_ready()
        assert second.running
        started = [p for p in (second.pid,) if p is not None]
        tree = [pid for root in started for pid in [root, *descendants(root)]]
    finally:
        clients.stop()
    assert clients.nodes == {}
    assert not [pid for pid in tree if is_alive(pid)]
    assert not [pid for pid in descendants(os.getpid()) if "flip_fl.flower" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
