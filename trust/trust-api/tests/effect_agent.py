"""A real trust-agent process whose ``ping`` handler leaves a trace on disk, for the reliability tests.

Run as ``python effect_agent.py EFFECTS_FILE HOLD_S`` with the usual ``FLIP_AGENT_*`` settings in the
environment.  For every task it appends ``start <task id> <attempt>`` to EFFECTS_FILE, holds the task for
HOLD_S seconds, then appends ``applied <task id> <attempt>`` (each line flushed and fsynced, so a line is
on disk before anything that follows it can happen) and answers like the built-in ping.  A test can kill
the process mid-task and count exactly what was started and what was applied.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from flip_core.tasks import TaskType
from flip_trust_api.config import AgentSettings, load_kit
from flip_trust_api.handlers import HandlerRegistry, TaskContext
from flip_trust_api.serve import serve


def _record(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def registry(effects: Path, hold_s: float) -> HandlerRegistry:
    async def ping(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        _record(effects, f"start {ctx.task_id} {ctx.attempt}")
        await asyncio.sleep(hold_s)
        _record(effects, f"applied {ctx.task_id} {ctx.attempt}")
        return {"echo": payload["message"], "attempt": ctx.attempt, "pid": os.getpid()}

    handlers = HandlerRegistry()
    handlers.register(TaskType.PING, ping, concurrency=8)
    return handlers


def main() -> None:
    effects, hold_s = Path(sys.argv[1]), float(sys.argv[2])
    settings = AgentSettings()
    kit = load_kit(settings.kit_file)
    asyncio.run(serve(settings, kit, registry=registry(effects, hold_s), announce=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main()
