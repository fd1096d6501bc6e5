"""The trust's ClientApp executor and SuperNode entry point, on their own.

That ClientApps really are forked from the executor, run and end cleanly, on a real net, is checked in
test_flower_run.py (BBB runs this executor, AAA Flower's default).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flip_fl.flower import supernode
from flip_fl.flower.net import free_port


def _executor(log: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "flip_fl.flower.executor", "--runtime-api-address", f"127.0.0.1:{free_port()}"]
    with log.open("wb") as out:
        return subprocess.Popen([*argv, "--no-fork", *extra], stdout=out, stderr=subprocess.STDOUT)


def _wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return process.wait(timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_the_executor_leaves_when_its_supernode_does(tmp_path: Path, parent: subprocess.Popen[bytes]) -> None:
    log = tmp_path / "executor.log"
    executor = _executor(log, "--parent-pid", str(parent.pid))
    deadline = time.monotonic() + 30
    # Nothing listens on the Runtime API address: it says so and keeps trying while its SuperNode lives.
    while "cannot reach the SuperNode's Runtime API" not in log.read_text():
        assert executor.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    parent.kill()
    parent.wait()
    assert _wait_exit(executor, 10) == 0
    assert "is gone; stopping" in log.read_text()


def test_sigterm_stops_the_executor(tmp_path: Path) -> None:
    log = tmp_path / "executor.log"
    executor = _executor(log)
    deadline = time.monotonic() + 30
    while "ready in" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    executor.send_signal(signal.SIGTERM)
    assert _wait_exit(executor, 10) == 0


def test_the_supernodes_waits_are_shortened() -> None:
    waits = supernode._ShortWaits(idle_s=0.2, local_s=0.05)
    started = time.monotonic()
    waits.sleep(3)  # the wait after an empty pull of the SuperLink
    idle = time.monotonic() - started
    started = time.monotonic()
    waits.sleep(0.5)  # a wait for local state
    local = time.monotonic() - started
    assert 0.2 <= idle < 1.0
    assert 0.05 <= local < 0.4
    assert waits.monotonic() >= started  # everything else is the time module's


def test_the_pinned_flower_supernode_loop_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal

    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)  # restored afterwards
    assert supernode.shorten_waits(0.5)
    assert isinstance(start_client_internal.time, supernode._ShortWaits)
    # Where the module no longer looks as expected, nothing is changed.
    assert not supernode.shorten_waits(0.5)


@pytest.mark.parametrize("argv", [["--idle-poll"], ["--idle-poll", "soon"], ["--idle-poll", "10"]])
def test_a_bad_idle_poll_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert supernode.main(argv) == 2
    assert "--idle-poll" in capsys.readouterr().err
