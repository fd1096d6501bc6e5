"""Stopping a process and everything it started, by PID.

Flower's SuperLink and SuperNode start a SuperExec in a session of its own, which starts ServerApp
and ClientApp processes; a process-group kill alone would leave those running. So the whole tree is
found first (Linux ``/proc``), then signalled: SIGTERM, a grace period, SIGKILL for what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

DEFAULT_GRACE_S = 5.0


def stop_process_tree(popen: subprocess.Popen[Any], grace_s: float = DEFAULT_GRACE_S) -> None:
    """SIGTERM the process, its group and every descendant; SIGKILL what is left after ``grace_s``."""
    root = popen.pid
    if popen.poll() is None:
        tree = [root, *descendants(root)]
        _signal_all(root, tree, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (popen.poll() is None or any(is_alive(pid) for pid in tree[1:])):
            time.sleep(0.05)
        tree = [p for p in [root, *tree, *descendants(root)] if is_alive(p)]
        _signal_all(root, tree, signal.SIGKILL)
    else:
        # The root is gone; its orphans (re-parented away) cannot be found any more, its group can.
        _signal_group(root, signal.SIGKILL)
    popen.wait()


def _signal_all(root: int, pids: list[int], sig: signal.Signals) -> None:
    _signal_group(root, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _signal_group(root: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, sig)


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def is_alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].split()[:1] != ["Z"]
