"""Every route of the hub, mounted under ``/api``."""

from fastapi import APIRouter

from flip_api.api.routes import (
    access_requests,
    audit,
    auth,
    cohorts,
    fl,
    health,
    imaging,
    models,
    projects,
    trust_machine,
    trusts,
    users,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(auth.router)
api_router.include_router(users.router)
api_router.include_router(access_requests.router)
api_router.include_router(trusts.router)
api_router.include_router(trust_machine.router)
api_router.include_router(projects.router)
api_router.include_router(cohorts.router)
api_router.include_router(imaging.router)
api_router.include_router(models.router)
api_router.include_router(fl.router)
api_router.include_router(audit.router)
