"""The trust agent: separate loops for heartbeat, leasing, health and the outbox, plus one task per job.

Start-up checks the kit against the hub (``whoami``) and refuses to work for another trust.  Then:

* the **heartbeat** loop reports liveness, the latest health snapshot and the outbox size every few
  seconds; it never waits for task work;
* the **lease** loop long-polls the hub, asking only for types with free concurrency slots, and starts
  one asyncio task per leased job; each job extends its lease at half-life while it runs;
* the **health** loop probes the trust's services concurrently;
* the **drain** loop re-posts results the hub has not acknowledged (also those left from a previous run).

Every result goes to the durable outbox before it is posted.  SIGTERM/SIGINT stop leasing, let running
jobs finish within a grace period, make one last delivery attempt and return.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from flip_core.contract import TrustKit
from flip_core.crypto import CryptoError, Keyring, decode_key
from flip_core.logging import request_id_var
from flip_core.tasks import (
    MAX_LEASE_BATCH,
    Heartbeat,
    LeasedTask,
    LeaseExtension,
    LeaseRequest,
    ServiceHealth,
    TaskResult,
)
from flip_trust_api import __version__, cohorts, imaging
from flip_trust_api.config import AgentSettings
from flip_trust_api.errors import AgentConfigError, AgentError, FatalHubError, IdentityMismatch, KitError
from flip_trust_api.handlers import ConcurrencyLimits, HandlerRegistry, TaskContext, TrustServices
from flip_trust_api.handlers import registry as ping_handlers
from flip_trust_api.health import HealthServer, Probe, build_probes, collect_health, initial_health
from flip_trust_api.hub_client import Backoff, HubClient, HubRejected, HubUnavailable, StaleLease
from flip_trust_api.outbox import OUTBOX_FILE, Claim, Outbox
from flip_trust_api.service_clients import data_access_client, imaging_client

log = logging.getLogger(__name__)

MIN_POLL_INTERVAL_S = 1.0
POLL_WAIT_JITTER = 0.2


def builtin_registry() -> HandlerRegistry:
    """The handlers an agent runs unless given others: ``ping``, the cohort and the imaging tasks."""
    registry = ping_handlers.copy()
    cohorts.register(registry)
    imaging.register(registry)
    return registry


MIN_EXTEND_DELAY_S = 1.0
DELIVERY_ATTEMPTS = 3
"""Tries a finishing job makes to post its own result before leaving it to the drain loop."""


class Phase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Delivery(StrEnum):
    ACKED = "acked"
    DROPPED = "dropped"
    KEPT = "kept"
    """Still in the outbox: the hub could not be reached, or refused it for a reason that may pass."""


# Refusals of one result that can never turn into an acceptance: the entry is dropped (and logged).
_FINAL_REFUSALS = frozenset({"task_not_found", "result_too_large"})


@dataclass
class _Job:
    """A leased task being worked on; a redelivery of the same task updates its token and deadline."""

    task: LeasedTask
    lease_token: str
    deadline: float  # monotonic time at which the hub lets the lease run out
    handle: asyncio.Task[None] | None = None
    lost: bool = False


class Agent:
    """One trust agent; :meth:`run` until :meth:`request_stop` (or a fatal error, which it raises)."""

    def __init__(
        self,
        settings: AgentSettings,
        kit: TrustKit,
        *,
        state_dir: Path | None = None,
        registry: HandlerRegistry | None = None,
        client: HubClient | None = None,
        probes: list[Probe] | None = None,
    ) -> None:
        self.settings = settings
        self.kit = kit
        self.state_dir = state_dir or settings.resolve_state_dir(kit)
        try:
            self.keyring = Keyring({kit.payload_key_id: decode_key(kit.payload_key)}, current=kit.payload_key_id)
        except CryptoError as exc:
            raise KitError(f"the kit's payload key is unusable: {exc}") from exc
        self.registry = registry if registry is not None else builtin_registry()
        self.limits = ConcurrencyLimits.for_registry(self.registry, settings.concurrency)
        self.client = client or HubClient(kit, timeout_s=settings.hub_timeout_s)
        self._probe_http = httpx.AsyncClient(timeout=settings.probe_timeout_s, follow_redirects=False)
        self._data_access = (
            data_access_client(settings.data_access_url, kit.internal_key, timeout_s=settings.data_access_timeout_s)
            if settings.data_access_url
            else None
        )
        self._imaging = (
            imaging_client(settings.imaging_url, kit.internal_key, timeout_s=settings.imaging_timeout_s)
            if settings.imaging_url
            else None
        )
        self.services = TrustServices(data_access=self._data_access, imaging=self._imaging)
        self.probes = (
            probes
            if probes is not None
            else build_probes(
                http=self._probe_http,
                data_access_url=settings.data_access_url,
                imaging_url=settings.imaging_url,
                pacs_host=settings.pacs_host,
                pacs_port=settings.pacs_port,
                omop_dsn=settings.omop_dsn,
                timeout_s=settings.probe_timeout_s,
            )
        )
        self.health_server = HealthServer(self.status_report, host=settings.health_host, port=settings.health_port)
        self.backoff = Backoff()
        self._jitter = random.Random()
        self.started_at = datetime.now(UTC)
        self.phase = Phase.STARTING
        self.outbox: Outbox | None = None
        self.health_ready = asyncio.Event()
        """Set once ``/health`` listens (its URL is :attr:`health_url`)."""
        self.ready = asyncio.Event()
        """Set once the identity is confirmed and the loops run."""
        self.counts: Counter[str] = Counter()
        self._services: dict[str, ServiceHealth] = initial_health(self.probes)
        self._jobs: dict[uuid.UUID, _Job] = {}
        self._delivering: set[uuid.UUID] = set()
        self._outbox_pending = 0
        self._stop = asyncio.Event()
        self._force = False
        self._fatal: BaseException | None = None
        self._slot_freed = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._drain_now = asyncio.Event()
        self._last_heartbeat_at: datetime | None = None
        self._hub_error: str | None = None

    @property
    def health_url(self) -> str:
        """The ``/health`` URL (valid once :attr:`health_ready` is set)."""
        return self.health_server.url

    def request_stop(self) -> None:
        """Begin a graceful shutdown; a second request skips the grace period for running jobs."""
        if self._stop.is_set():
            self._force = True
            for job in list(self._jobs.values()):
                if job.handle is not None:
                    job.handle.cancel()
        self._stop.set()

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
            log.error("trust agent stopping: %s", exc)
        self._force = True
        self._stop.set()

    async def run(self) -> None:
        """Run until stopped; raises :class:`~flip_trust_api.errors.AgentConfigError` on a fatal refusal."""
        loops: list[asyncio.Task[None]] = []
        lease: asyncio.Task[None] | None = None
        try:
            try:
                await self._open_outbox()
                await self._serve_health()
                if not await self._confirm_identity():
                    return
            except AgentError as exc:
                self._fail(exc)
                return
            loops = [
                asyncio.create_task(self._guard(self._heartbeat_loop), name="heartbeat"),
                asyncio.create_task(self._guard(self._health_loop), name="health"),
                asyncio.create_task(self._guard(self._drain_loop), name="outbox-drain"),
            ]
            if self.settings.fl_enabled:
                loops.append(asyncio.create_task(self._guard(self._fl_loop), name="fl-clients"))
            lease = asyncio.create_task(self._guard(self._lease_loop), name="lease")
            self.phase = Phase.RUNNING
            self.ready.set()
            log.info(
                "trust agent running",
                extra={
                    "trust": self.kit.trust_code,
                    "types": [t.value for t in self.registry.types],
                    "outbox_pending": self._outbox_pending,
                },
            )
            await self._stop.wait()
        finally:
            self.phase = Phase.STOPPING
            await self._shutdown(lease, loops)
            self.phase = Phase.STOPPED
            if self._fatal is not None:
                raise self._fatal

    async def _open_outbox(self) -> None:
        path = self.state_dir / OUTBOX_FILE
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.outbox = await Outbox.open(path)
            self._outbox_pending = await self.outbox.size()
        except (OSError, sqlite3.Error) as exc:
            raise AgentConfigError(f"cannot open the outbox {path}: {exc}") from exc

    async def _serve_health(self) -> None:
        try:
            await self.health_server.start()
        except OSError as exc:
            where = f"{self.settings.health_host}:{self.settings.health_port}"
            raise AgentConfigError(f"cannot serve /health on {where}: {exc.strerror or exc}") from exc
        log.info("health endpoint listening", extra={"url": self.health_url})
        self.health_ready.set()

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop; a fatal error or an unexpected crash stops the whole agent."""
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Raised from run() once the agent has shut down (the CLI logs its traceback).
            self._fail(exc)

    async def _confirm_identity(self) -> bool:
        """Ask the hub who this key is (retrying while it is unreachable); False if stopped meanwhile."""
        whoami = asyncio.create_task(self.client.whoami())
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({whoami, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not whoami.done():
            whoami.cancel()
            with suppress(asyncio.CancelledError):
                await whoami
            return False
        try:
            identity = whoami.result()  # raises FatalHubError for a bad key or protocol
        except HubRejected as exc:
            raise AgentConfigError(
                f"the hub at {self.kit.hub_url} refused the identity check ({exc}); is the kit's hub URL right?"
            ) from exc
        if identity.trust_id != self.kit.trust_id:
            raise IdentityMismatch(self.kit.trust_id, identity.trust_id, "whoami")
        log.info("identity confirmed", extra={"trust_id": str(identity.trust_id), "trust_code": identity.code})
        return True

    async def _shutdown(self, lease: asyncio.Task[None] | None, loops: list[asyncio.Task[None]]) -> None:
        # The FL clients (SuperNodes and the training they run) stop first: they run in sessions of their own,
        # so nothing else would stop them if the agent were killed while it waits for its tasks.
        for task in loops:
            if task.get_name() == "fl-clients":
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if lease is not None:
            lease.cancel()
            with suppress(asyncio.CancelledError):
                await lease
        handles = [job.handle for job in self._jobs.values() if job.handle is not None]
        if handles:
            grace = 0.0 if self._force else self.settings.shutdown_grace_s
            log.info("waiting for running tasks", extra={"running": len(handles), "grace_s": grace})
            _done, late = await asyncio.wait(handles, timeout=grace) if grace > 0 else (set(), set(handles))
            for handle in late:
                handle.cancel()
            if late:
                log.warning("tasks still running at shutdown were abandoned", extra={"abandoned": len(late)})
                await asyncio.wait(late)
        for task in loops:
            task.cancel()
        for task in loops:
            with suppress(asyncio.CancelledError):
                await task
        if self.outbox is not None and self.ready.is_set() and self._fatal is None:
            await self._final_flush()
        await self.health_server.stop()
        await self.client.aclose()
        await self._probe_http.aclose()
        for service in (self._data_access, self._imaging):
            if service is not None:
                await service.aclose()
        if self.outbox is not None:
            pending = await self.outbox.size()
            await self.outbox.close()
            log.info("trust agent stopped", extra={"outbox_pending": pending})

    async def _final_flush(self) -> None:
        """One last attempt per pending result; whatever fails stays in the outbox for the next start."""
        assert self.outbox is not None
        for entry in await self.outbox.pending():
            if await self._deliver(entry.task_id, entry.result, attempts=1) is Delivery.KEPT:
                break

    # -- heartbeat -------------------------------------------------------------------------------

    async def _fl_loop(self) -> None:
        """Keep one Flower SuperNode per Flower net the hub lists (see :mod:`flip_trust_api.fl_client`)."""
        from flip_trust_api.fl_client import FlClients, TrainerEnvironment  # flwr and torch: only when used

        trainer = TrainerEnvironment(
            data_access_url=self.settings.data_access_url,
            imaging_url=self.settings.imaging_url,
            trainer_key=self.settings.trainer_key.get_secret_value() if self.settings.trainer_key else None,
            cache_dir=self.state_dir / "fl" / "cache",
        )
        clients = await asyncio.to_thread(FlClients, self.kit.trust_code, self.state_dir, trainer)
        key_sent = False
        try:
            while True:
                try:
                    if not key_sent:
                        await self.client.put_fl_node_key(clients.public_key, attempts=1)
                        key_sent = True
                    nets = await self.client.fl_nets(attempts=1)
                    await clients.areconcile(nets.root)
                except (HubUnavailable, HubRejected) as exc:
                    log.warning("FL clients: the hub could not be asked for FL nets", extra={"error": str(exc)})
                await asyncio.sleep(self.settings.fl_refresh_s)
        finally:
            await clients.astop()

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            self._beat_now.clear()
            assert self.outbox is not None
            self._outbox_pending = await self.outbox.size()
            beat = Heartbeat(
                agent_version=__version__,
                started_at=self.started_at,
                services=dict(self._services),
                outbox_pending=self._outbox_pending,
            )
            try:
                ack = await self.client.heartbeat(beat)
            except (HubUnavailable, HubRejected) as exc:
                self._hub_error = str(exc)
                (log.debug if failing else log.warning)("heartbeat failed", extra={"error": str(exc)})
                failing = True
            else:
                if ack.trust_id != self.kit.trust_id:
                    raise IdentityMismatch(self.kit.trust_id, ack.trust_id, "heartbeat")
                if failing:
                    log.info("heartbeat delivered again")
                failing = False
                self._hub_error = None
                self._last_heartbeat_at = datetime.now(UTC)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), timeout=self.settings.heartbeat_interval_s)

    # -- health ----------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            snapshot = await collect_health(
                self.probes, timeout_s=self.settings.probe_timeout_s, slow_s=self.settings.probe_slow_s
            )
            changed = {n: h.state for n, h in snapshot.items()} != {n: h.state for n, h in self._services.items()}
            self._services = snapshot
            if changed:
                log.info("service health changed", extra={"services": {n: h.state.value for n, h in snapshot.items()}})
                self._beat_now.set()
            await asyncio.sleep(self.settings.health_interval_s)

    # -- leasing ---------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        rejected = 0
        while True:
            self._slot_freed.clear()
            free = {t: n for t, n in self.limits.free().items() if n > 0}
            if not free:
                await self._slot_freed.wait()
                continue
            request = LeaseRequest(
                max_tasks=min(min(free.values()), MAX_LEASE_BATCH), types=sorted(free), lease_s=self.settings.lease_s
            )
            asked = time.monotonic()
            try:
                response = await self.client.lease(request, wait_s=self._poll_wait())
            except HubRejected as exc:
                # Not the agent's fault as a whole (that would be fatal): say so and try again later.
                log.error("the hub refused to lease tasks", extra={"status": exc.status, "code": exc.code})
                self._hub_error = str(exc)
                await asyncio.sleep(self.backoff.delay(rejected))
                rejected += 1
                continue
            rejected = 0
            received = time.monotonic()
            if response.trust_id != self.kit.trust_id:
                raise IdentityMismatch(self.kit.trust_id, response.trust_id, "lease")
            for task in response.tasks:
                lease_left = (task.lease_expires_at - response.server_time).total_seconds()
                await self._accept(task, deadline=received + lease_left)
            if not response.tasks and received - asked < MIN_POLL_INTERVAL_S:
                # The hub answered an empty lease at once (wait=0, or a proxy cut the poll): do not spin.
                await asyncio.sleep(MIN_POLL_INTERVAL_S)

    def _poll_wait(self) -> float:
        """The configured wait less up to a fifth, at random: agents that all reconnected at once after a
        hub restart drift apart instead of polling in lockstep for ever."""
        return round(self.settings.lease_wait_s * self._jitter.uniform(1 - POLL_WAIT_JITTER, 1.0), 1)

    async def _accept(self, task: LeasedTask, *, deadline: float) -> None:
        assert self.outbox is not None
        job = self._jobs.get(task.id)
        if job is not None:
            # Our lease ran out while we worked (e.g. the hub was unreachable) and it came back to us:
            # the running job answers the new lease.
            job.lease_token = task.lease_token
            job.deadline = deadline
            log.info("task redelivered while running", extra={"task_id": str(task.id), "attempt": task.attempt})
            return
        claim = await self.outbox.claim(task.id, task.lease_token)
        if claim is Claim.REPLAY:
            self.counts["replayed"] += 1
            log.info(
                "task redelivered; its stored result answers it",
                extra={"task_id": str(task.id), "attempt": task.attempt},
            )
            self._drain_now.set()
            return
        if claim is Claim.DUPLICATE:
            log.info("lease already answered; ignored", extra={"task_id": str(task.id)})
            return
        if not self.limits.try_acquire(task.type):
            # Only possible if the hub ignored the requested types or batch size; leave it to expire.
            log.error("the hub leased more work than asked for", extra={"task_id": str(task.id), "type": task.type})
            return
        job = _Job(task=task, lease_token=task.lease_token, deadline=deadline)
        self._jobs[task.id] = job
        job.handle = asyncio.create_task(self._run_job(job), name=f"task-{task.id}")

    async def _run_job(self, job: _Job) -> None:
        task = job.task
        context = request_id_var.set(str(task.id))
        keeper = asyncio.create_task(self._keep_lease(job), name=f"lease-{task.id}")
        try:
            log.info("task started", extra={"type": task.type.value, "attempt": task.attempt})
            ctx = TaskContext(
                task_id=task.id,
                task_type=task.type,
                attempt=task.attempt,
                trust_id=self.kit.trust_id,
                trust_code=self.kit.trust_code,
                agent_version=__version__,
                services=self.services,
            )
            try:
                outcome = await self.registry.execute(task, self.keyring, ctx)
            finally:
                keeper.cancel()
                with suppress(asyncio.CancelledError):
                    await keeper
            self.counts[outcome.outcome] += 1
            log.info(
                "task finished",
                extra={"outcome": outcome.outcome, "code": outcome.error.code if outcome.error else None},
            )
            await self._store_and_deliver(job, outcome.to_result(job.lease_token))
        except asyncio.CancelledError:
            reason = "its lease was lost" if job.lost else "the agent is stopping"
            log.warning("task abandoned: %s; the hub will lease it again", reason)
            raise
        except Exception:
            log.exception("could not store or deliver a task result")
        finally:
            del self._jobs[task.id]
            self.limits.release(task.type)
            self._slot_freed.set()
            request_id_var.reset(context)

    async def _store_and_deliver(self, job: _Job, result: TaskResult) -> None:
        assert self.outbox is not None
        await self.outbox.put(job.task.id, result)
        while True:
            delivery = await self._deliver(job.task.id, result, attempts=DELIVERY_ATTEMPTS)
            if delivery is Delivery.ACKED or job.lease_token == result.lease_token:
                return
            # Re-leased to us while we posted: the same work answers the newer lease.
            result = result.model_copy(update={"lease_token": job.lease_token})
            await self.outbox.put(job.task.id, result)

    async def _keep_lease(self, job: _Job) -> None:
        """Extend the job's lease each time half of what is left has passed."""
        while True:
            await asyncio.sleep(max((job.deadline - time.monotonic()) / 2, MIN_EXTEND_DELAY_S))
            token = job.lease_token
            asked = time.monotonic()
            try:
                await self.client.extend(job.task.id, LeaseExtension(lease_token=token, extend_s=self.settings.lease_s))
            except StaleLease:
                if job.lease_token != token:
                    continue  # redelivered meanwhile; extend the new lease next time round
                job.lost = True
                log.warning("lease lost while the task ran", extra={"task_id": str(job.task.id)})
                if job.handle is not None:
                    job.handle.cancel()
                return
            except (HubUnavailable, HubRejected) as exc:
                log.warning("could not extend a lease", extra={"task_id": str(job.task.id), "error": str(exc)})
                continue
            except FatalHubError as exc:
                self._fail(exc)
                return
            if job.lease_token == token:
                job.deadline = asked + self.settings.lease_s

    # -- outbox ----------------------------------------------------------------------------------

    async def _deliver(self, task_id: uuid.UUID, result: TaskResult, *, attempts: int) -> Delivery:
        """Post one stored result and settle its outbox entry according to the hub's answer."""
        assert self.outbox is not None
        if task_id in self._delivering:
            return Delivery.KEPT
        self._delivering.add(task_id)
        try:
            ack = await self.client.post_result(task_id, result, attempts=attempts)
        except StaleLease as exc:
            # The lease ran out and the task went out again — maybe to this very agent, whose lease
            # response may still be on its way: keep a usable result so that it answers the new lease.
            reusable = result.outcome == "completed" or (result.error is not None and not result.error.retryable)
            if await self.outbox.drop(task_id, result.lease_token, exc.code, reusable=reusable):
                log.warning("result refused: its lease is stale", extra={"task_id": str(task_id), "kept": reusable})
            return Delivery.DROPPED
        except HubRejected as exc:
            if exc.code in _FINAL_REFUSALS or exc.status == 409:
                await self.outbox.drop(task_id, result.lease_token, exc.code)
                log.error("result dropped: the hub refused it", extra={"task_id": str(task_id), "code": exc.code})
                return Delivery.DROPPED
            await self.outbox.note_failure(task_id, str(exc))
            log.error("the hub refused a result; kept for retry", extra={"task_id": str(task_id), "code": exc.code})
            return Delivery.KEPT
        except HubUnavailable as exc:
            await self.outbox.note_failure(task_id, str(exc))
            self._hub_error = str(exc)
            return Delivery.KEPT
        except FatalHubError as exc:
            self._fail(exc)
            return Delivery.KEPT
        finally:
            self._delivering.discard(task_id)
        await self.outbox.ack(task_id, result.lease_token, ack.status.value)
        self.counts["delivered"] += 1
        if ack.duplicate:
            log.info("result was already stored by the hub", extra={"task_id": str(task_id)})
        return Delivery.ACKED

    async def _drain_loop(self) -> None:
        assert self.outbox is not None
        retry = 0
        while True:
            self._drain_now.clear()
            kept = False
            for entry in await self.outbox.pending():
                if entry.task_id in self._jobs:
                    continue  # its job is delivering it
                if await self._deliver(entry.task_id, entry.result, attempts=1) is Delivery.KEPT:
                    kept = True
                    break
            self._outbox_pending = await self.outbox.size()
            delay = self.backoff.delay(retry) if kept else self.settings.outbox_retry_s
            retry = retry + 1 if kept else 0
            with suppress(TimeoutError):
                await asyncio.wait_for(self._drain_now.wait(), timeout=delay)

    # -- /health ---------------------------------------------------------------------------------

    def status_report(self) -> tuple[int, dict[str, Any]]:
        """What ``/health`` answers: 200 while starting or running, 503 once stopping; the state as JSON."""
        body: dict[str, Any] = {
            "status": self.phase.value,
            "agent_version": __version__,
            "trust": {"id": str(self.kit.trust_id), "code": self.kit.trust_code, "name": self.kit.trust_name},
            "started_at": self.started_at.isoformat(),
            "hub": {
                "url": self.kit.hub_url,
                "last_heartbeat_at": self._last_heartbeat_at.isoformat() if self._last_heartbeat_at else None,
                "error": self._hub_error,
            },
            "services": {n: h.model_dump(mode="json") for n, h in self._services.items()},
            "tasks": {
                "running": {t.value: n for t, n in self.limits.in_use().items()},
                "limits": {t.value: self.limits.limit(t) for t in self.registry.types},
                "completed": self.counts["completed"],
                "failed": self.counts["failed"],
                "replayed": self.counts["replayed"],
                "delivered": self.counts["delivered"],
            },
            "outbox_pending": self._outbox_pending,
        }
        return (503 if self.phase in (Phase.STOPPING, Phase.STOPPED) else 200), body
