"""``flip trust``: run the trust side (the agent that connects a hospital to the hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from flip_cli.data_access import data_access
from flip_cli.errors import CliError, config_error
from flip_cli.imaging import imaging
from flip_cli.omop import omop
from flip_trust_api.config import AgentSettings
from flip_trust_api.errors import AgentConfigError, AgentError
from flip_trust_api.serve import run_agent


@click.group()
def trust() -> None:
    """The trust side: the agent that leases work from the hub, the data-access-api and the OMOP database."""


@trust.command()
@click.option(
    "--kit",
    "kit_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The trust kit written by `flip admin register-trust` [default: FLIP_AGENT_KIT_FILE].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the agent keeps its outbox [default: FLIP_AGENT_STATE_DIR, else $FLIP_STATE_DIR/trust-<code>].",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of the /health endpoint; 0 picks a free one and prints it [default: FLIP_AGENT_HEALTH_PORT or 0].",
)
def serve(kit_file: Path | None, state_dir: Path | None, health_port: int | None) -> None:
    """Run the trust agent until SIGINT/SIGTERM.

    It confirms with the hub that the kit's key belongs to the kit's trust (exit 3 if not), then
    heartbeats, long-polls for tasks, runs them, and keeps unacknowledged results in a local outbox
    so that nothing is lost while the hub is unreachable. Its only inbound route is /health.
    """
    overrides: dict[str, Any] = {}
    if kit_file is not None:
        overrides["FLIP_AGENT_KIT_FILE"] = kit_file
    if state_dir is not None:
        overrides["FLIP_AGENT_STATE_DIR"] = state_dir
    if health_port is not None:
        overrides["FLIP_AGENT_HEALTH_PORT"] = health_port
    try:
        settings = AgentSettings(**overrides)
    except ValidationError as exc:
        raise config_error(f"invalid agent configuration: {exc}") from exc
    try:
        run_agent(settings)
    except AgentConfigError as exc:
        raise config_error(str(exc)) from exc
    except AgentError as exc:
        raise CliError(str(exc)) from exc
    except Exception as exc:
        # run_agent has logged the traceback; the operator gets one line and exit code 1.
        raise CliError(f"the trust agent stopped unexpectedly: {type(exc).__name__}: {exc}") from exc


trust.add_command(omop)
trust.add_command(data_access)
trust.add_command(imaging)
