"""Liveness and readiness of the hub (public)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from flip_api import __version__
from flip_api.api.deps import SessionDep
from flip_core.contract import PROTOCOL_VERSION

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    protocol_version: str
    database: Literal["ok"]


@router.get("/health", response_model=Health)
async def health(db: SessionDep) -> Health:
    """The hub is up and its database answers."""
    await db.execute(text("SELECT 1"))
    return Health(status="ok", version=__version__, protocol_version=PROTOCOL_VERSION, database="ok")
