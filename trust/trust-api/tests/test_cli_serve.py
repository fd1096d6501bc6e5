"""``flip trust serve`` as a real process: it serves, answers the hub, stops cleanly, exits 3 on bad config."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from trust_testing import RunningHub, ping_payload, write_kit

from flip_core.tasks import TaskType
from flip_trust_api.serve import HEALTH_ANNOUNCEMENT

pytestmark = pytest.mark.slow


async def _flip_trust_serve(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "FLIP_LOG_JSON": "true",
        "FLIP_AGENT_LEASE_WAIT_S": "1",
        "FLIP_AGENT_HEARTBEAT_INTERVAL_S": "0.5",
        "FLIP_STATE_DIR": str(tmp_path / "flip-state"),
    }
    with (tmp_path / "agent.log").open("wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flip_cli.main",
            "trust",
            "serve",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
        )


async def _finish(proc: asyncio.subprocess.Process) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_answers_pings_and_exits_0_on_sigterm(hub: RunningHub, tmp_path: Path) -> None:
    trust, kit = await hub.register_trust("CLI")
    kit_file = write_kit(tmp_path / "kit.env", kit)
    proc = await _flip_trust_serve(tmp_path, "--kit", str(kit_file), "--health-port", "0")
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
        assert line.startswith(HEALTH_ANNOUNCEMENT), line
        url = line.removeprefix(HEALTH_ANNOUNCEMENT).strip()
        task_id = await hub.enqueue(trust, TaskType.PING, ping_payload("from the CLI test"))
        done = await hub.wait_for_task(task_id)
        assert done.result is not None
        assert done.result["echo"] == "from the CLI test"
        async with httpx.AsyncClient() as http:
            health = (await http.get(url)).json()
        assert health["status"] == "running"
        proc.send_signal(signal.SIGTERM)
    finally:
        rc = await _finish(proc)
    assert rc == 0
    # The default state folder is $FLIP_STATE_DIR/trust-<code>.
    assert (tmp_path / "flip-state" / "trust-cli" / "outbox.sqlite3").exists()
    lines = [json.loads(raw) for raw in (tmp_path / "agent.log").read_text().splitlines() if raw.startswith("{")]
    finished = [entry for entry in lines if entry["msg"] == "task finished"]
    assert [entry["request_id"] for entry in finished] == [str(task_id)]  # logs carry the task id
    assert lines[-1]["msg"] == "trust agent stopped"


async def test_serve_exits_3_when_the_kit_belongs_to_another_trust(hub: RunningHub, tmp_path: Path) -> None:
    _, kit_a = await hub.register_trust("CLA")
    trust_b, _ = await hub.register_trust("CLB")
    wrong = write_kit(tmp_path / "kit.env", kit_a.model_copy(update={"trust_id": trust_b.id}))
    proc = await _flip_trust_serve(tmp_path, "--kit", str(wrong), "--state-dir", str(tmp_path / "agent"))
    assert await _finish(proc) == 3
    assert "identity mismatch" in (tmp_path / "agent.log").read_text()


@pytest.mark.parametrize("content", [None, "FLIP_TRUST_HUB_URL=http://127.0.0.1:9\n"])
async def test_serve_exits_3_for_a_missing_or_incomplete_kit(tmp_path: Path, content: str | None) -> None:
    kit_file = tmp_path / "kit.env"
    if content is not None:
        kit_file.write_text(content)
    proc = await _flip_trust_serve(tmp_path, "--kit", str(kit_file))
    assert await _finish(proc) == 3
    log = (tmp_path / "agent.log").read_text()
    assert ("cannot read the trust kit" if content is None else "is not a valid trust kit") in log
