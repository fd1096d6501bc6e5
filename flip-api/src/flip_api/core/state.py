"""Process-wide objects the routes need, built once at start-up and kept on ``app.state.hub``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from flip_api.core.config import HubSettings
from flip_api.core.identity import IdentityService
from flip_api.core.ratelimit import RateLimiter
from flip_api.services.task_notifier import TaskNotifier
from flip_api.storage import ObjectStore


@dataclass
class HubState:
    settings: HubSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    jwt_secret: str = field(repr=False)
    data_key: bytes = field(repr=False)
    identity: IdentityService = field(repr=False)
    notifier: TaskNotifier = field(repr=False)
    objects: ObjectStore = field(repr=False)
    limiter: RateLimiter = field(default_factory=RateLimiter)
