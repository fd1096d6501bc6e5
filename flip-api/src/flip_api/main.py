"""The hub application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from flip_api import __version__
from flip_api.api.router import api_router
from flip_api.core.config import HubSettings
from flip_api.core.errors import install_error_handlers
from flip_api.core.identity import BuiltinVerifier, IdentityService, OidcVerifier, TokenVerifier
from flip_api.core.middleware import RequestContextMiddleware
from flip_api.core.security import configure_password_hashing
from flip_api.core.state import HubState
from flip_api.db.session import libpq_conninfo, make_engine, make_sessionmaker, run_migrations, transaction
from flip_api.services.rbac import seed_roles
from flip_api.services.task_notifier import TaskNotifier
from flip_api.storage import object_store_from_settings
from flip_api.worker import run_worker

log = logging.getLogger(__name__)


def create_app(settings: HubSettings, database_url: str) -> FastAPI:
    """Build the hub. At start it migrates the database (failing fast) and seeds the role catalogue."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_password_hashing(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism)
        run_migrations(database_url)
        engine = make_engine(database_url, settings.db_pool_size)
        sessions = make_sessionmaker(engine)
        async with transaction(sessions) as db:
            await seed_roles(db)
        jwt_secret = settings.jwt_secret_value()
        verifiers: list[TokenVerifier] = [BuiltinVerifier(jwt_secret)]
        if settings.oidc_jwks_url and settings.oidc_issuer:
            verifiers.append(
                OidcVerifier(
                    settings.oidc_jwks_url, settings.oidc_issuer, settings.oidc_audience, settings.oidc_email_claim
                )
            )
        app.state.hub = HubState(
            settings=settings,
            engine=engine,
            sessions=sessions,
            jwt_secret=jwt_secret,
            data_key=settings.data_key_bytes(),
            identity=IdentityService(verifiers),
            notifier=TaskNotifier(libpq_conninfo(database_url)),
            objects=object_store_from_settings(settings),
        )
        hub: HubState = app.state.hub
        await hub.notifier.start()
        worker = (
            asyncio.create_task(run_worker(hub, settings.worker_interval_s), name="hub-worker")
            if settings.worker_in_process
            else None
        )
        log.info("hub started", extra={"version": __version__, "env": settings.env.value})
        try:
            yield
        finally:
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            await hub.notifier.stop()
            await engine.dispose()

    app = FastAPI(
        title="FLIP hub API",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs" if settings.expose_docs else None,
        swagger_ui_oauth2_redirect_url="/api/docs/oauth2-redirect",
        redoc_url=None,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(api_router, prefix="/api")
    return app
