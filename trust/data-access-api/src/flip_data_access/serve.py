"""Running the data-access-api as a process (what ``flip trust data-access serve`` calls)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import uvicorn

from flip_core.logging import configure_logging
from flip_data_access.app import create_app
from flip_data_access.config import DataAccessSettings, perturbation_seed, read_kit
from flip_data_access.gate import DisclosureGate
from flip_data_access.omop import OmopDatabase
from flip_data_access.service import CohortService
from flip_data_access.snapshot import SnapshotStore

log = logging.getLogger(__name__)

ANNOUNCEMENT = "data-access-api listening on:"
"""Start of the stdout line giving the service's URL (its port is chosen at start when 0)."""


def build_service(settings: DataAccessSettings) -> tuple[CohortService, str, str | None]:
    """The service, the internal key that guards it and the trainer key (if set), from settings and the kit."""
    kit = read_kit(settings.kit_file)
    trainer_key = settings.trainer_secret(kit)
    state = settings.resolve_state_dir(kit)
    service = CohortService(
        db=OmopDatabase(
            settings.omop_conninfo(),
            pool_size=settings.pool_size,
            statement_timeout_s=settings.statement_timeout_s,
            work_mem_mb=settings.work_mem_mb,
        ),
        gate=DisclosureGate(settings.min_k, settings.noise),
        snapshots=SnapshotStore(state / "snapshots", max_bytes=settings.snapshot_max_bytes),
        seed=perturbation_seed(state),
    )
    return service, kit.internal_key, trainer_key


def run(
    settings: DataAccessSettings, *, announce: Callable[[str], None] = lambda line: print(line, flush=True)
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and drains requests)."""
    configure_logging("flip-data-access-api", settings.log_level, json_output=settings.log_json)
    for chatty in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    service, internal_key, trainer_key = build_service(settings)
    app = create_app(service, internal_key, trainer_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.05)
        if server.started:
            announce(f"{ANNOUNCEMENT} http://{host}:{port}")
            log.info(
                "data-access-api ready",
                extra={"url": f"http://{host}:{port}", "k": settings.min_k, "trainer_key": trainer_key is not None},
            )
        await serving

    asyncio.run(main())
