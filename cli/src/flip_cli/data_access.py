"""``flip trust data-access``: run the trust's data-access-api (validated cohort SQL behind the disclosure gate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from flip_cli.errors import CliError, config_error
from flip_data_access.config import DataAccessConfigError, DataAccessSettings
from flip_data_access.serve import run


@click.group("data-access")
def data_access() -> None:
    """The data-access-api: answers cohort questions on the trust's OMOP data, only through its disclosure gate."""


@data_access.command()
@click.option(
    "--kit",
    "kit_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The trust kit (its internal key guards every route) [default: FLIP_DATA_ACCESS_KIT_FILE].",
)
@click.option(
    "--omop-url",
    default=None,
    help="OMOP database as the read-only role, postgresql://... [default: FLIP_DATA_ACCESS_OMOP_URL].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Snapshots and the perturbation seed [default: FLIP_DATA_ACCESS_STATE_DIR, else under FLIP_STATE_DIR].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port on 127.0.0.1 (0 picks a free one and prints the URL) [default: FLIP_DATA_ACCESS_PORT or 0].",
)
def serve(kit_file: Path | None, omop_url: str | None, state_dir: Path | None, port: int | None) -> None:
    """Serve the data-access-api until SIGINT/SIGTERM.

    Every route but /health needs the kit's internal key; every number it returns passes the disclosure
    gate (threshold FLIP_DATA_ACCESS_MIN_K, at least 10, counted in distinct persons).
    """
    overrides: dict[str, Any] = {}
    for name, value in (
        ("FLIP_DATA_ACCESS_KIT_FILE", kit_file),
        ("FLIP_DATA_ACCESS_OMOP_URL", omop_url),
        ("FLIP_DATA_ACCESS_STATE_DIR", state_dir),
        ("FLIP_DATA_ACCESS_PORT", port),
    ):
        if value is not None:
            overrides[name] = value
    try:
        settings = DataAccessSettings(**overrides)
    except ValidationError as exc:
        raise config_error(f"invalid data-access-api configuration: {exc}") from exc
    try:
        run(settings)
    except DataAccessConfigError as exc:
        raise config_error(str(exc)) from exc
    except OSError as exc:
        raise config_error(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise CliError(f"the data-access-api stopped unexpectedly: {type(exc).__name__}: {exc}") from exc
