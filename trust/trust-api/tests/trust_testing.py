"""Helpers for the trust agent's tests: a real hub served over TCP in the test's event loop, kits, agents.

The hub is the real application (``flip_api.main.create_app``) on a real PostgreSQL, served by uvicorn
on 127.0.0.1 — the agent talks to it exactly as it would in production.  It runs in the test's own
event loop so a test can arrange hub state with the hub's services directly, stop the hub (an outage)
and start it again on the same port.  Only tests import the hub; the agent's code never does.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.config import HubSettings
from flip_api.core.state import HubState
from flip_api.db.models import AuditEntry, Trust, TrustTask
from flip_api.db.session import transaction
from flip_api.main import create_app
from flip_api.services.audit import Actor
from flip_api.services.tasks import enqueue_task
from flip_api.services.trusts import register_trust
from flip_core.contract import TrustKit
from flip_core.tasks import PingPayload, TaskStatus, TaskType
from flip_trust_api.agent import Agent
from flip_trust_api.config import AgentSettings
from flip_trust_api.handlers import HandlerRegistry, TaskContext

T = TypeVar("T")


class _NoSignals(uvicorn.Server):
    """The test process keeps its own signal handling."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_hub_settings(state_dir: Path, port: int) -> HubSettings:
    """Hub settings for tests: cheap password hashing, plain-text logs, served on 127.0.0.1:``port``."""
    return HubSettings(
        FLIP_STATE_DIR=state_dir,
        FLIP_JWT_SECRET="test-jwt-secret-" + uuid.uuid4().hex,
        FLIP_HUB_PUBLIC_URL=f"http://127.0.0.1:{port}",
        FLIP_LOG_JSON=False,
        FLIP_ARGON2_TIME_COST=1,
        FLIP_ARGON2_MEMORY_KIB=1024,
        FLIP_ARGON2_PARALLELISM=1,
    )


@dataclass
class RunningHub:
    """The hub on ``127.0.0.1:port``; :meth:`stop` and :meth:`start` simulate an outage."""

    settings: HubSettings
    db_url: str
    port: int
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _state: HubState | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> HubState:
        assert self._state is not None, "the hub is not running"
        return self._state

    async def start(self) -> None:
        app = create_app(self.settings, self.db_url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=5)
        server = _NoSignals(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="test-hub")
        deadline = time.monotonic() + 60
        while not server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the hub stopped during start-up")
            assert time.monotonic() < deadline, "the hub did not start"
            await asyncio.sleep(0.02)
        self._state = app.state.hub

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None
        self._task = None
        self._state = None

    async def register_trust(self, code: str) -> tuple[Trust, TrustKit]:
        async with transaction(self.state.sessions) as s:
            issued = await register_trust(
                s,
                Actor.system("test"),
                data_key=self.state.data_key,
                hub_url=self.url,
                name=f"Trust {code}",
                code=code,
            )
        return issued.trust, issued.kit

    async def enqueue(self, trust: Trust, task_type: TaskType, payload: dict[str, Any]) -> uuid.UUID:
        async with transaction(self.state.sessions) as s:
            task = await enqueue_task(s, self.state, trust, task_type, payload)
        return task.id

    async def enqueue_burst(self, trust: Trust, payloads: list[dict[str, Any]]) -> list[uuid.UUID]:
        """Enqueue pings in one transaction: they become visible, and wake every waiter, at once."""
        async with transaction(self.state.sessions) as s:
            created = [await enqueue_task(s, self.state, trust, TaskType.PING, p) for p in payloads]
        return [task.id for task in created]

    async def expire_lease(self, session: AsyncSession, task_id: uuid.UUID) -> None:
        """Make the task's current lease one that ran out a second ago (inside the caller's transaction)."""
        past = datetime.now(UTC) - timedelta(seconds=1)
        await session.execute(update(TrustTask).where(TrustTask.id == task_id).values(lease_expires_at=past))

    async def task(self, task_id: uuid.UUID) -> TrustTask:
        async with self.state.sessions() as s:
            row = await s.get(TrustTask, task_id)
            assert row is not None
            return row

    async def trust(self, trust_id: uuid.UUID) -> Trust:
        async with self.state.sessions() as s:
            row = await s.get(Trust, trust_id)
            assert row is not None
            return row

    async def wait_for_task(self, task_id: uuid.UUID, *statuses: TaskStatus, timeout_s: float = 30) -> TrustTask:
        wanted = statuses or (TaskStatus.COMPLETED,)
        return await eventually(lambda: self.task(task_id), lambda t: t.status in wanted, timeout_s=timeout_s)

    async def audit_actions(self, subject_id: uuid.UUID) -> list[str]:
        async with self.state.sessions() as s:
            rows = await s.scalars(
                select(AuditEntry.action).where(AuditEntry.subject_id == str(subject_id)).order_by(AuditEntry.seq)
            )
            return list(rows.all())


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, timeout_s: float = 30, every_s: float = 0.05
) -> T:
    """Poll ``probe`` until ``accept`` holds; fail with the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; last value: {value!r}")
        await asyncio.sleep(every_s)


async def current(value: T) -> T:
    """An awaitable of a value read now, for :func:`eventually` probes of plain attributes."""
    return value


def write_kit(path: Path, kit: TrustKit) -> Path:
    path.write_text(kit.to_env(), encoding="utf-8")
    path.chmod(0o600)
    return path


def agent_settings(kit_file: Path, state_dir: Path, **overrides: Any) -> AgentSettings:
    """Fast settings for tests: short lease polls and heartbeats, no grace to speak of."""
    values: dict[str, Any] = {
        "FLIP_AGENT_KIT_FILE": kit_file,
        "FLIP_AGENT_STATE_DIR": state_dir,
        "FLIP_AGENT_HEARTBEAT_INTERVAL_S": 0.3,
        "FLIP_AGENT_LEASE_WAIT_S": 1,
        "FLIP_AGENT_HEALTH_INTERVAL_S": 0.5,
        "FLIP_AGENT_SHUTDOWN_GRACE_S": 5,
        "FLIP_AGENT_OUTBOX_RETRY_S": 0.2,
        "FLIP_LOG_JSON": False,
    }
    values.update(overrides)
    return AgentSettings(**values)


@dataclass
class AgentRun:
    """An agent running as a task of the test's event loop."""

    agent: Agent
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.agent.request_stop()
        await asyncio.wait_for(self.task, timeout=30)


async def start_agent(
    settings: AgentSettings, kit: TrustKit, *, registry: HandlerRegistry | None = None, ready: bool = True
) -> AgentRun:
    agent = Agent(settings, kit, registry=registry)
    task = asyncio.create_task(agent.run(), name="test-agent")
    if ready:
        waiter = asyncio.create_task(agent.ready.wait())
        await asyncio.wait({waiter, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            await task  # surfaces why it stopped
        assert agent.ready.is_set(), "the agent did not become ready"
    return AgentRun(agent, task)


class Gate:
    """A ``ping`` handler that holds every task until :attr:`release` is set, counting what it sees."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.running = 0
        self.max_running = 0
        self.cancelled = 0

    async def handler(self, payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return {"echo": payload["message"], "attempt": ctx.attempt}

    def registry(self, concurrency: int = 8) -> HandlerRegistry:
        registry = HandlerRegistry()
        registry.register(TaskType.PING, self.handler, concurrency=concurrency)
        return registry


def ping_payload(message: str = "hello trust") -> dict[str, Any]:
    return PingPayload(message=message, sent_at=datetime.now(UTC)).model_dump(mode="json")
