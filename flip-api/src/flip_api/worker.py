"""Background maintenance of the hub: one active worker at a time, chosen by a PostgreSQL advisory lock.

In the embedded default it runs inside the API process; in production run it as its own process (or
leave it on in every replica: each tick only does work if it wins the lock).  Each tick fails tasks
whose last allowed lease ran out, so that failures are visible without waiting for the next lease,
asks trusts for a fresh status of imaging imports that are still running, rescans model files a crash
left in quarantine, fails training jobs that waited in the queue past their bound, and runs the FL
scheduler (assigns queued jobs to free FL nets, submits them, watches their runs; see ``fl_runs``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.state import HubState
from flip_api.db.session import transaction
from flip_api.services import fl_jobs, fl_runs, model_files
from flip_api.services.imaging import refresh_statuses
from flip_api.services.tasks import fail_exhausted_leases

log = logging.getLogger(__name__)

WORKER_LOCK = 726003
# Held (session-level) for the length of the FL scheduler's pass, which calls FL nets between transactions.
FL_SCHEDULER_LOCK = 726004


@dataclass(frozen=True)
class TickReport:
    """What one maintenance tick did."""

    failed_leases: int  # tasks failed because their last lease ran out
    imaging_refreshes: int  # get_imaging_status tasks queued
    files_rescanned: int = 0  # model files stuck in scanning (or uploaded but never completed), scanned again
    uploads_expired: int = 0  # presigned uploads dropped: nothing arrived before they expired
    jobs_expired: int = 0  # training jobs no FL net took within FLIP_FL_QUEUE_TIMEOUT_S
    fl: fl_runs.SchedulerReport | None = None  # the FL scheduler's pass (None: another worker ran it)


async def _won(db: AsyncSession) -> bool:
    return bool(await db.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": WORKER_LOCK}))


async def run_once(hub: HubState) -> TickReport | None:
    """One maintenance tick; None when another worker holds the lock.

    Each job runs in its own transaction (taking the lock again), so that one failing does not undo the other.
    """
    async with transaction(hub.sessions) as db:
        if not await _won(db):
            return None
        failed = await fail_exhausted_leases(db)
    async with transaction(hub.sessions) as db:
        refreshed = await refresh_statuses(db, hub) if await _won(db) else 0
    async with transaction(hub.sessions) as db:
        expired = await fl_jobs.expire_queue(db, timeout_s=hub.settings.fl_queue_timeout_s) if await _won(db) else 0
    async with transaction(hub.sessions) as db:
        won = await _won(db)
    swept = await model_files.sweep(hub) if won else model_files.SweepReport()
    scheduled = await _schedule(hub) if won else None
    if failed:
        log.info("failed tasks whose leases ran out", extra={"tasks": failed})
    if expired:
        log.warning("training jobs expired in the queue", extra={"jobs": expired})
    if swept.rescanned or swept.expired:
        log.info("model files swept", extra={"rescanned": swept.rescanned, "expired": swept.expired})
    if refreshed:
        log.info("asked trusts for imaging status", extra={"tasks": refreshed})
    return TickReport(failed, refreshed, swept.rescanned, swept.expired, expired, scheduled)


async def _schedule(hub: HubState) -> fl_runs.SchedulerReport | None:
    """The FL scheduler's pass, under a session-level lock so that two workers never drive a net at once."""
    async with hub.engine.connect() as conn:
        if not await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": FL_SCHEDULER_LOCK}):
            return None
        await conn.commit()
        try:
            report = await fl_runs.tick(hub)
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FL_SCHEDULER_LOCK})
            await conn.commit()
    if report.assigned or report.submitted or report.failed or report.released:
        log.info("FL scheduler", extra={**report.__dict__})
    return report


async def run_worker(hub: HubState, interval_s: float) -> None:
    """Tick forever (until cancelled); errors are logged and the next tick tries again."""
    while True:
        try:
            await run_once(hub)
        except asyncio.CancelledError:
            raise
        except (OperationalError, InterfaceError) as exc:
            # The database is away (restart, failover): say so briefly; the next tick tries again.
            log.warning("worker tick skipped: database unavailable", extra={"error": type(exc.orig).__name__})
        except Exception:
            log.exception("worker tick failed")
        await asyncio.sleep(interval_s)
