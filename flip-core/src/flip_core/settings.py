"""Helpers shared by every service's pydantic-settings class."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class FlipSettings(BaseSettings):
    """Base for service settings: environment variables only, unknown variables ignored."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, populate_by_name=True)


def default_state_dir() -> Path:
    """Where embedded defaults keep their state: ``FLIP_STATE_DIR`` or ``./.flip``."""
    return Path(os.environ.get("FLIP_STATE_DIR", ".flip")).resolve()
