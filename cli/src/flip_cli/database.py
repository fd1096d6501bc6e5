"""The hub database seen from the command line: settings, embedded fallback, and async service calls.

The hub's services are async (SQLAlchemy + psycopg 3); the CLI is synchronous.  :class:`HubDatabase`
keeps one event loop (``asyncio.Runner``) and one engine for the life of a command, so that many
service calls can share a connection pool without re-creating it per call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from flip_api.core.config import HubSettings
from flip_api.core.security import configure_password_hashing
from flip_api.db.session import make_engine, make_sessionmaker, resolve_database, run_migrations, transaction
from flip_api.services.rbac import seed_roles
from flip_cli.errors import translate_errors

T = TypeVar("T")
log = logging.getLogger(__name__)


def load_settings() -> HubSettings:
    """Hub settings from the environment; invalid values become a configuration error (exit 3)."""
    with translate_errors():
        return HubSettings()


class HubDatabase:
    """An engine on its own event loop; :meth:`run` executes one unit of work in one transaction."""

    def __init__(self, url: str, pool_size: int = 2) -> None:
        self.url = url
        self._pool_size = pool_size
        self._runner: asyncio.Runner | None = None
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    def __enter__(self) -> HubDatabase:
        self._runner = asyncio.Runner()
        self._engine = make_engine(self.url, self._pool_size)
        self._sessions = make_sessionmaker(self._engine)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Dispose of the pool and the loop (idempotent)."""
        runner, engine = self._runner, self._engine
        self._runner = self._engine = self._sessions = None
        if runner is None:
            return
        try:
            if engine is not None:
                runner.run(engine.dispose())
        except Exception:
            # Closing must not mask the error that got us here; the server drops the connections anyway.
            log.warning("could not dispose of the database pool cleanly", exc_info=True)
        finally:
            runner.close()

    def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``work(session)`` inside one transaction: committed if it returns, rolled back if it raises."""
        if self._runner is None or self._sessions is None:
            raise RuntimeError("HubDatabase is not open; use it as a context manager")
        sessions = self._sessions

        async def unit() -> T:
            async with transaction(sessions) as db:
                return await work(db)

        return self._runner.run(unit())


@contextmanager
def open_hub_database(settings: HubSettings, *, prepare: bool) -> Iterator[HubDatabase]:
    """The hub database (embedded under the state dir when ``DATABASE_URL`` is unset).

    With ``prepare`` the schema is migrated and the role catalogue seeded first, so that operator
    bootstrap commands work on an empty database.  An embedded server started here is stopped on exit
    (it keeps running while another process, such as a running hub, still holds it).
    """
    configure_password_hashing(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism)
    with translate_errors():
        resolved = resolve_database(settings.database_url, settings.state_dir)
    try:
        with translate_errors():
            if prepare:
                run_migrations(resolved.url)
            with HubDatabase(resolved.url) as db:
                if prepare:
                    db.run(seed_roles)
                yield db
    finally:
        if resolved.embedded is not None:
            resolved.embedded.stop()
