"""The agent's settings (``FLIP_AGENT_*`` environment variables) and loading the trust kit.

The kit file (written once by ``flip admin register-trust``) says who the trust is and how to reach
the hub; everything else here is tuning with defaults that suit a single-host deployment.  Probe
targets are optional: a service that is not configured reports ``unknown`` rather than ``down``.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from flip_core.contract import KitFileError, TrustKit, read_kit_file
from flip_core.settings import FlipSettings, default_state_dir
from flip_core.tasks import DEFAULT_LEASE_S, MAX_LEASE_EXTENSION_S, MAX_LEASE_WAIT_S, TaskType
from flip_trust_api.errors import KitError

log = logging.getLogger(__name__)


class AgentSettings(FlipSettings):
    """Settings of the trust agent process."""

    kit_file: Path | None = Field(None, validation_alias="FLIP_AGENT_KIT_FILE")
    state_dir: Path | None = Field(None, validation_alias="FLIP_AGENT_STATE_DIR")
    log_level: str = Field("INFO", validation_alias="FLIP_LOG_LEVEL")
    log_json: bool = Field(True, validation_alias="FLIP_LOG_JSON")

    heartbeat_interval_s: float = Field(30.0, ge=0.1, le=300, validation_alias="FLIP_AGENT_HEARTBEAT_INTERVAL_S")
    lease_wait_s: int = Field(MAX_LEASE_WAIT_S, ge=0, le=MAX_LEASE_WAIT_S, validation_alias="FLIP_AGENT_LEASE_WAIT_S")
    lease_s: int = Field(DEFAULT_LEASE_S, ge=10, le=MAX_LEASE_EXTENSION_S, validation_alias="FLIP_AGENT_LEASE_S")
    concurrency: dict[TaskType, int] = Field(default_factory=dict, validation_alias="FLIP_AGENT_CONCURRENCY")
    hub_timeout_s: float = Field(30.0, gt=0, le=300, validation_alias="FLIP_AGENT_HUB_TIMEOUT_S")
    shutdown_grace_s: float = Field(30.0, ge=0, le=3600, validation_alias="FLIP_AGENT_SHUTDOWN_GRACE_S")
    outbox_retry_s: float = Field(5.0, gt=0, le=600, validation_alias="FLIP_AGENT_OUTBOX_RETRY_S")

    health_interval_s: float = Field(30.0, ge=0.1, le=3600, validation_alias="FLIP_AGENT_HEALTH_INTERVAL_S")
    probe_timeout_s: float = Field(5.0, gt=0, le=60, validation_alias="FLIP_AGENT_PROBE_TIMEOUT_S")
    probe_slow_s: float = Field(1.0, gt=0, le=60, validation_alias="FLIP_AGENT_PROBE_SLOW_S")
    health_host: str = Field("127.0.0.1", min_length=1, validation_alias="FLIP_AGENT_HEALTH_HOST")
    health_port: int = Field(0, ge=0, le=65535, validation_alias="FLIP_AGENT_HEALTH_PORT")

    data_access_url: str | None = Field(None, validation_alias="FLIP_AGENT_DATA_ACCESS_URL")
    data_access_timeout_s: float = Field(
        600, gt=0, le=7200, validation_alias="FLIP_AGENT_DATA_ACCESS_TIMEOUT_S", description="per cohort request"
    )
    imaging_url: str | None = Field(None, validation_alias="FLIP_AGENT_IMAGING_URL")
    imaging_timeout_s: float = Field(
        120, gt=0, le=3600, validation_alias="FLIP_AGENT_IMAGING_TIMEOUT_S", description="per imaging request"
    )
    pacs_host: str | None = Field(None, validation_alias="FLIP_AGENT_PACS_HOST")
    pacs_port: int = Field(104, ge=1, le=65535, validation_alias="FLIP_AGENT_PACS_PORT")
    pacs_ae_title: str | None = Field(None, max_length=16, validation_alias="FLIP_AGENT_PACS_AE_TITLE")
    omop_dsn: SecretStr | None = Field(None, validation_alias="FLIP_AGENT_OMOP_DSN")
    # FL clients: one Flower SuperNode per Flower net the hub lists (checked every fl_refresh_s).
    fl_enabled: bool = Field(True, validation_alias="FLIP_AGENT_FL_ENABLED")
    fl_refresh_s: float = Field(30.0, ge=0.5, le=3600, validation_alias="FLIP_AGENT_FL_REFRESH_S")
    # The key the trainer SDK shows the data-access-api and imaging-api (their FLIP_TRAINER_KEY).
    trainer_key: SecretStr | None = Field(None, validation_alias="FLIP_AGENT_TRAINER_KEY")

    @field_validator("concurrency")
    @classmethod
    def _positive_limits(cls, value: dict[TaskType, int]) -> dict[TaskType, int]:
        bad = {t.value: n for t, n in value.items() if not 1 <= n <= 256}
        if bad:
            raise ValueError(f"concurrency limits must be between 1 and 256, got {bad}")
        return value

    @field_validator("data_access_url", "imaging_url", "pacs_host", "pacs_ae_title")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None

    def resolve_state_dir(self, kit: TrustKit) -> Path:
        """The agent's state folder: ``FLIP_AGENT_STATE_DIR``, else ``$FLIP_STATE_DIR/trust-<code>``."""
        if self.state_dir is not None:
            return self.state_dir.expanduser().absolute()
        return default_state_dir() / f"trust-{kit.trust_code.lower()}"


def load_kit(path: Path | None) -> TrustKit:
    """Read and validate a trust kit file; raises :class:`KitError` with an actionable message."""
    try:
        kit = read_kit_file(path, "FLIP_AGENT_KIT_FILE")
        mode = path.expanduser().stat().st_mode if path is not None else 0
    except KitFileError as exc:
        raise KitError(str(exc)) from exc
    except OSError as exc:
        raise KitError(f"cannot read the trust kit {path}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the trust kit is readable by other users; it holds secret keys (chmod 600 it)")
    return kit
