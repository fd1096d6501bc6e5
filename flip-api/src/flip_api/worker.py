"""Background maintenance of the hub: one active worker at a time, chosen by a PostgreSQL advisory lock.

In the embedded default it runs inside the API process; in production run it as its own process (or
leave it on in every replica: each tick only does work if it wins the lock).  Each tick fails tasks
whose last allowed lease ran out, so that failures are visible without waiting for the next lease.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError

from flip_api.core.state import HubState
from flip_api.db.session import transaction
from flip_api.services.tasks import fail_exhausted_leases

log = logging.getLogger(__name__)

WORKER_LOCK = 726003


async def run_once(hub: HubState) -> int | None:
    """One maintenance tick; None when another worker holds the lock."""
    async with transaction(hub.sessions) as db:
        if not await db.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": WORKER_LOCK}):
            return None
        failed = await fail_exhausted_leases(db)
    if failed:
        log.info("failed tasks whose leases ran out", extra={"tasks": failed})
    return failed


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
