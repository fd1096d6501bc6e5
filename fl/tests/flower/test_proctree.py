"""Stopping a process tree by PID, including a child that left for a session of its own."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from flip_fl.flower.proctree import descendants, is_alive, stop_process_tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc")

IGNORE_SIGTERM = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(1, flush=True)\ntime.sleep(30)\n"
)


def test_the_whole_tree_is_stopped() -> None:
    # Like Flower's SuperExec: one child in the parent's group, one in a new session (setsid).
    parent = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & setsid sleep 60 & wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(descendants(parent.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    tree = [parent.pid, *descendants(parent.pid)]
    stop_process_tree(parent, grace_s=2.0)
    assert not [pid for pid in tree if is_alive(pid)]


def test_a_process_that_ignores_sigterm_is_killed() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", IGNORE_SIGTERM],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert stubborn.stdout is not None
    stubborn.stdout.readline()  # SIGTERM is ignored from here on
    started = time.monotonic()
    stop_process_tree(stubborn, grace_s=0.5)
    assert stubborn.returncode == -9
    assert time.monotonic() - started < 5
