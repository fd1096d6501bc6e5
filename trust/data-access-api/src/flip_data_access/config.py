"""Settings of the data-access-api (``FLIP_DATA_ACCESS_*``) and the secrets it keeps in its state folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from flip_core.cohort import DEFAULT_MIN_K, MAX_K
from flip_core.contract import KitFileError, TrustKit, read_kit_file
from flip_core.settings import FlipSettings, default_state_dir
from flip_core.state_secret import StateSecretError, state_secret

PERTURBATION_KEY_FILE = "perturbation.key"


class DataAccessConfigError(Exception):
    """Something the operator must fix before the service can start."""


class DataAccessSettings(FlipSettings):
    """Settings of one trust's data-access-api process."""

    kit_file: Path | None = Field(None, validation_alias="FLIP_DATA_ACCESS_KIT_FILE")
    omop_url: SecretStr | None = Field(
        None, validation_alias="FLIP_DATA_ACCESS_OMOP_URL", description="OMOP database, as the read-only role"
    )
    state_dir: Path | None = Field(None, validation_alias="FLIP_DATA_ACCESS_STATE_DIR")
    min_k: int = Field(DEFAULT_MIN_K, ge=DEFAULT_MIN_K, le=MAX_K, validation_alias="FLIP_DATA_ACCESS_MIN_K")
    noise: int = Field(2, ge=0, le=10, validation_alias="FLIP_DATA_ACCESS_NOISE")
    statement_timeout_s: float = Field(120, gt=0, le=3600, validation_alias="FLIP_DATA_ACCESS_STATEMENT_TIMEOUT_S")
    snapshot_max_bytes: int = Field(
        2 * 1024**3, ge=1024, le=1024**4, validation_alias="FLIP_DATA_ACCESS_SNAPSHOT_MAX_BYTES"
    )
    pool_size: int = Field(4, ge=1, le=64, validation_alias="FLIP_DATA_ACCESS_POOL_SIZE")
    work_mem_mb: int = Field(64, ge=1, le=4096, validation_alias="FLIP_DATA_ACCESS_WORK_MEM_MB")
    host: str = Field("127.0.0.1", min_length=1, validation_alias="FLIP_DATA_ACCESS_HOST")
    port: int = Field(0, ge=0, le=65535, validation_alias="FLIP_DATA_ACCESS_PORT")
    log_level: str = Field("INFO", validation_alias="FLIP_LOG_LEVEL")
    log_json: bool = Field(True, validation_alias="FLIP_LOG_JSON")
    trainer_key: SecretStr | None = Field(
        None,
        min_length=16,
        max_length=256,
        validation_alias="FLIP_TRAINER_KEY",
        description="lets the trust's FL trainers read a frozen cohort's rows (and nothing else); unset: refused",
    )

    @field_validator("trainer_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def resolve_state_dir(self, kit: TrustKit) -> Path:
        """``FLIP_DATA_ACCESS_STATE_DIR``, else ``$FLIP_STATE_DIR/data-access-<code>``."""
        if self.state_dir is not None:
            return self.state_dir.expanduser().absolute()
        return default_state_dir() / f"data-access-{kit.trust_code.lower()}"

    def omop_conninfo(self) -> str:
        if self.omop_url is None:
            raise DataAccessConfigError("set FLIP_DATA_ACCESS_OMOP_URL to the OMOP database (read-only role)")
        return to_conninfo(self.omop_url.get_secret_value())

    def trainer_secret(self, kit: TrustKit) -> str | None:
        """``FLIP_TRAINER_KEY``, refused when it equals the internal key (trainers would get every route)."""
        if self.trainer_key is None:
            return None
        value = self.trainer_key.get_secret_value()
        if value == kit.internal_key:
            raise DataAccessConfigError("FLIP_TRAINER_KEY must differ from the trust's internal key")
        return value


def to_conninfo(url: str) -> str:
    """A libpq connection string for a ``postgresql://`` URL (SQLAlchemy-style driver suffixes allowed)."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def read_kit(path: Path | None) -> TrustKit:
    """The trust kit (for the internal key and the trust's code); errors name the fix."""
    try:
        return read_kit_file(path, "FLIP_DATA_ACCESS_KIT_FILE")
    except KitFileError as exc:
        raise DataAccessConfigError(str(exc)) from exc


def perturbation_seed(state_dir: Path) -> int:
    """The trust's secret seed for per-person record keys, created once (0600) and never sent anywhere.

    It must outlive restarts and key rotations: a new seed would give every cohort new offsets and let a
    patient researcher average them away.
    """
    try:
        value = int.from_bytes(state_secret(state_dir / PERTURBATION_KEY_FILE, 8), "big")
    except StateSecretError as exc:
        raise DataAccessConfigError(str(exc)) from exc
    # PostgreSQL's seeded hash takes a signed 64-bit seed.
    return value - 2**64 if value >= 2**63 else value
