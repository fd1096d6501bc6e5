"""Settings of the imaging-api (``FLIP_IMAGING_*``) and the de-identification secret in its state folder."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from flip_core.contract import KitFileError, TrustKit, read_kit_file
from flip_core.settings import FlipSettings, default_state_dir
from flip_core.state_secret import StateSecretError, state_secret

DEID_KEY_FILE = "deid.key"
DEID_KEY_BYTES = 32


class ImagingConfigError(Exception):
    """Something the operator must fix before the service can start."""


class ImagingSettings(FlipSettings):
    """Settings of one trust's imaging-api process."""

    kit_file: Path | None = Field(None, validation_alias="FLIP_IMAGING_KIT_FILE")
    state_dir: Path | None = Field(None, validation_alias="FLIP_IMAGING_STATE_DIR")
    host: str = Field("127.0.0.1", min_length=1, validation_alias="FLIP_IMAGING_HOST")
    port: int = Field(0, ge=0, le=65535, validation_alias="FLIP_IMAGING_PORT")
    log_level: str = Field("INFO", validation_alias="FLIP_LOG_LEVEL")
    log_json: bool = Field(True, validation_alias="FLIP_LOG_JSON")
    trainer_key: SecretStr | None = Field(
        None,
        min_length=16,
        max_length=256,
        validation_alias="FLIP_TRAINER_KEY",
        description="lets the trust's FL trainers read a READY study's files (and nothing else); unset: refused",
    )

    pacs_host: str = Field("127.0.0.1", min_length=1, validation_alias="FLIP_IMAGING_PACS_HOST")
    pacs_port: int | None = Field(None, ge=1, le=65535, validation_alias="FLIP_IMAGING_PACS_PORT")
    pacs_ae_title: str | None = Field(None, min_length=1, max_length=16, validation_alias="FLIP_IMAGING_PACS_AE_TITLE")
    ae_title: str = Field("FLIPTRUST", min_length=1, max_length=16, validation_alias="FLIP_IMAGING_AE_TITLE")

    data_access_url: str | None = Field(None, validation_alias="FLIP_IMAGING_DATA_ACCESS_URL")
    data_access_timeout_s: float = Field(120, gt=0, le=3600, validation_alias="FLIP_IMAGING_DATA_ACCESS_TIMEOUT_S")
    labels_dir: Path | None = Field(None, validation_alias="FLIP_IMAGING_LABELS_DIR")

    parallel: int = Field(2, ge=1, le=64, validation_alias="FLIP_IMAGING_PARALLEL", description="studies at once")
    deid_workers: int = Field(
        0, ge=0, le=64, validation_alias="FLIP_IMAGING_DEID_WORKERS", description="0: one per CPU core"
    )
    convert_timeout_s: float = Field(300, gt=0, le=7200, validation_alias="FLIP_IMAGING_CONVERT_TIMEOUT_S")
    expire_interval_s: float = Field(30, gt=0, le=3600, validation_alias="FLIP_IMAGING_EXPIRE_INTERVAL_S")

    @field_validator("pacs_ae_title", "data_access_url", "trainer_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def resolve_state_dir(self, kit: TrustKit) -> Path:
        """``FLIP_IMAGING_STATE_DIR``, else ``$FLIP_STATE_DIR/imaging-<code>``."""
        if self.state_dir is not None:
            return self.state_dir.expanduser().absolute()
        return default_state_dir() / f"imaging-{kit.trust_code.lower()}"

    def require_pacs(self) -> tuple[str, int, str]:
        if self.pacs_port is None or self.pacs_ae_title is None:
            raise ImagingConfigError(
                "say where the PACS is: FLIP_IMAGING_PACS_PORT and FLIP_IMAGING_PACS_AE_TITLE (--pacs-port, "
                "--pacs-ae-title), and FLIP_IMAGING_PACS_HOST when it is not on this machine"
            )
        return self.pacs_host, self.pacs_port, self.pacs_ae_title

    def require_data_access(self) -> str:
        if self.data_access_url is None:
            raise ImagingConfigError(
                "set FLIP_IMAGING_DATA_ACCESS_URL (--data-access-url): accession ids and every count come from "
                "the trust's data-access-api"
            )
        return self.data_access_url

    def trainer_secret(self, kit: TrustKit) -> str | None:
        """``FLIP_TRAINER_KEY``, refused when it equals the internal key (trainers would get every route)."""
        if self.trainer_key is None:
            return None
        value = self.trainer_key.get_secret_value()
        if value == kit.internal_key:
            raise ImagingConfigError("FLIP_TRAINER_KEY must differ from the trust's internal key")
        return value

    def deid_worker_count(self) -> int:
        return self.deid_workers or os.cpu_count() or 1


def read_kit(path: Path | None) -> TrustKit:
    """The trust kit (for the internal key and the trust's code); errors name the fix."""
    try:
        return read_kit_file(path, "FLIP_IMAGING_KIT_FILE")
    except KitFileError as exc:
        raise ImagingConfigError(str(exc)) from exc


def deid_secret(state_dir: Path) -> bytes:
    """The trust's de-identification secret, created once (0600) and never sent anywhere.

    Pseudonymous UIDs and study keys are HMACs under it: a new secret would give every study new
    pseudonyms, so it must be backed up with the store and never replaced.
    """
    try:
        return state_secret(state_dir / DEID_KEY_FILE, DEID_KEY_BYTES)
    except StateSecretError as exc:
        raise ImagingConfigError(str(exc)) from exc
