"""``flip hub``: run the hub service."""

from __future__ import annotations

import click
import uvicorn

from flip_api.db.session import resolve_database
from flip_api.main import create_app
from flip_cli.database import load_settings
from flip_cli.errors import translate_errors
from flip_core.logging import configure_logging


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
    with translate_errors():
        database = resolve_database(settings.database_url, settings.state_dir)
    try:
        app = create_app(settings, database.url)
        # uvicorn installs its own SIGINT/SIGTERM handlers and drains connections before returning.
        uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_config=None)
    finally:
        if database.embedded is not None:
            database.embedded.stop()
