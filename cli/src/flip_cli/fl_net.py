"""``flip fl-net``: run an FL net's control API (a Flower SuperLink driven for the hub)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from flip_cli.errors import config_error


@click.group("fl-net")
def fl_net() -> None:
    """An FL net: one FL server (Flower SuperLink) and the control API the hub drives it through."""


@fl_net.command()
@click.option("--name", envvar="FLIP_NET_NAME", default="flower-1", show_default=True, help="The net's name.")
@click.option("--key", envvar="FLIP_NET_KEY", required=True, help="The net key the hub minted (FLIP_NET_KEY).")
@click.option(
    "--hub-url",
    envvar="FLIP_NET_HUB_URL",
    default=None,
    help="The hub's public URL; the FL server reports there (FLIP_NET_HUB_URL). Without: report files only.",
)
@click.option(
    "--state-dir",
    envvar="FLIP_NET_STATE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the net keeps its TLS files, registered SuperNode keys and runs (FLIP_NET_STATE_DIR).",
)
@click.option("--host", envvar="FLIP_NET_HOST", default="127.0.0.1", show_default=True, help="Control API address.")
@click.option("--port", envvar="FLIP_NET_PORT", type=click.IntRange(1, 65535), default=8090, show_default=True)
@click.option(
    "--fleet-host",
    envvar="FLIP_NET_FLEET_HOST",
    default="127.0.0.1",
    show_default=True,
    help="The address the SuperLink listens on and its certificate names; trusts dial it.",
)
@click.option("--fleet-port", envvar="FLIP_NET_FLEET_PORT", type=click.IntRange(1, 65535), default=None)
def serve(
    name: str,
    key: str,
    hub_url: str | None,
    state_dir: Path,
    host: str,
    port: int,
    fleet_host: str,
    fleet_port: int | None,
) -> None:
    """Run the net until SIGINT/SIGTERM: its SuperLink (TLS, SuperNode authentication) and its control API.

    Register the net with the hub first (``POST /api/fl/nets`` as an admin, with this control API's URL);
    the answer's key is this net's ``FLIP_NET_KEY``.
    """
    import uvicorn

    from flip_fl.flower.service import NetConfig, create_app

    if len(key) < 16:
        raise config_error("FLIP_NET_KEY is too short: use the key the hub returned when the net was registered")
    logging.basicConfig(level=logging.INFO)
    config = NetConfig(
        name=name,
        state_dir=state_dir.expanduser().resolve(),
        key=key,
        hub_report_url=f"{hub_url.rstrip('/')}/api/fl" if hub_url else None,
        fleet_host=fleet_host,
        fleet_port=fleet_port,
    )
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
