"""Running the imaging-api as a process (what ``flip trust imaging serve`` calls)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from types import FrameType

import uvicorn

from flip_core.logging import configure_logging
from flip_imaging.app import create_app
from flip_imaging.cohort_link import CohortLink
from flip_imaging.config import ImagingSettings, deid_secret, read_kit
from flip_imaging.deid import Deidentifier
from flip_imaging.importer import StudyImporter
from flip_imaging.pacs import PacsClient
from flip_imaging.service import ImagingService
from flip_imaging.store import ImageStore
from flip_imaging.studies import StudyLedger

log = logging.getLogger(__name__)

ANNOUNCEMENT = "imaging-api listening on:"
"""Start of the stdout line giving the service's URL (its port is chosen at start when 0)."""


def _stopped_by_uvicorn(signum: int, frame: FrameType | None) -> None:
    log.info("imaging-api stopped", extra={"signal": signal.Signals(signum).name})


def build_service(
    settings: ImagingSettings, deid_pool: Executor | None = None
) -> tuple[ImagingService, str, str | None]:
    """The service, the internal key that guards it and the trainer key (if set), from settings and the kit."""
    kit = read_kit(settings.kit_file)
    trainer_key = settings.trainer_secret(kit)
    host, port, called = settings.require_pacs()
    data_access_url = settings.require_data_access()
    state = settings.resolve_state_dir(kit)
    importer = StudyImporter(
        ledger=StudyLedger(state / "studies.sqlite3"),
        store=ImageStore(state / "images"),
        pacs=PacsClient(host, port, called, calling_ae_title=settings.ae_title),
        deid=Deidentifier(deid_secret(state)),
        parallel=settings.parallel,
        convert_timeout_s=settings.convert_timeout_s,
        deid_pool=deid_pool,
        labels=settings.labels_dir.expanduser().absolute() if settings.labels_dir else None,
    )
    cohorts = CohortLink(data_access_url, kit.internal_key, timeout_s=settings.data_access_timeout_s)
    return (
        ImagingService(importer, cohorts, expire_interval_s=settings.expire_interval_s),
        kit.internal_key,
        trainer_key,
    )


def run(settings: ImagingSettings, *, announce: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both; studies in flight finish first)."""
    configure_logging("flip-imaging-api", settings.log_level, json_output=settings.log_json)
    for chatty in ("uvicorn.error", "uvicorn.access", "pynetdicom"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # De-identification is CPU-bound Python: worker processes, not threads, spread it over the cores.
    pool = ProcessPoolExecutor(settings.deid_worker_count(), mp_context=multiprocessing.get_context("forkserver"))
    try:
        service, internal_key, trainer_key = build_service(settings, pool)
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
                    "imaging-api ready", extra={"url": f"http://{host}:{port}", "trainer_key": trainer_key is not None}
                )
            await serving

        # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler it
        # found: with this one in place the re-raise is a no-op, so a clean stop exits 0, not -15.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stopped_by_uvicorn)
        asyncio.run(main())
    finally:
        pool.shutdown(cancel_futures=True)
