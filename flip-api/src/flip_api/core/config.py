"""Typed hub configuration (pydantic-settings). Every variable is documented in ``.env.development``."""

from __future__ import annotations

import json
import os
import secrets
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator

from flip_core.cohort import DEFAULT_MIN_K, MAX_K
from flip_core.crypto import decode_key, encode_key, new_key
from flip_core.settings import FlipSettings, default_state_dir


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ConfigError(Exception):
    """Configuration is missing or inconsistent; the message says which variable to set."""


class HubSettings(FlipSettings):
    """Settings of the hub process (API, worker, admin CLI)."""

    env: Environment = Field(Environment.DEVELOPMENT, validation_alias="FLIP_ENV")
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "FLIP_DATABASE_URL"))
    state_dir: Path = Field(default_factory=default_state_dir, validation_alias="FLIP_STATE_DIR")
    public_url: str = Field("http://127.0.0.1:8000", validation_alias="FLIP_HUB_PUBLIC_URL")
    host: str = Field("127.0.0.1", validation_alias="FLIP_HUB_HOST")
    port: int = Field(8000, ge=1, le=65535, validation_alias="FLIP_HUB_PORT")
    # Agents call every <= 30 s: keep their connections open longer than that (no reconnect per poll).
    keepalive_s: int = Field(75, ge=1, le=3600, validation_alias="FLIP_HUB_KEEPALIVE_S")
    listen_backlog: int = Field(4096, ge=64, le=65535, validation_alias="FLIP_HUB_LISTEN_BACKLOG")
    log_level: str = Field("INFO", validation_alias="FLIP_LOG_LEVEL")
    log_json: bool = Field(True, validation_alias="FLIP_LOG_JSON")

    jwt_secret: SecretStr | None = Field(None, validation_alias="FLIP_JWT_SECRET")
    data_key: SecretStr | None = Field(None, validation_alias="FLIP_DATA_KEY")
    access_token_ttl_s: int = Field(900, ge=60, le=86400, validation_alias="FLIP_ACCESS_TOKEN_TTL_S")
    refresh_token_ttl_s: int = Field(14 * 86400, ge=300, le=90 * 86400, validation_alias="FLIP_REFRESH_TOKEN_TTL_S")
    mfa_required: bool = Field(True, validation_alias="FLIP_MFA_REQUIRED")
    mfa_issuer: str = Field("FLIP", validation_alias="FLIP_MFA_ISSUER")
    login_max_failures: int = Field(5, ge=1, le=100, validation_alias="FLIP_LOGIN_MAX_FAILURES")
    login_lockout_s: int = Field(900, ge=1, le=86400, validation_alias="FLIP_LOGIN_LOCKOUT_S")
    rate_limit_login_per_min: int = Field(20, ge=1, validation_alias="FLIP_RATE_LIMIT_LOGIN_PER_MIN")
    rate_limit_access_request_per_min: int = Field(5, ge=1, validation_alias="FLIP_RATE_LIMIT_ACCESS_REQUEST_PER_MIN")
    rate_limit_user_lookup_per_min: int = Field(60, ge=1, validation_alias="FLIP_RATE_LIMIT_USER_LOOKUP_PER_MIN")
    oidc_jwks_url: str | None = Field(None, validation_alias="FLIP_OIDC_JWKS_URL")
    oidc_issuer: str | None = Field(None, validation_alias="FLIP_OIDC_ISSUER")
    oidc_audience: str | None = Field(None, validation_alias="FLIP_OIDC_AUDIENCE")
    oidc_email_claim: str = Field("email", validation_alias="FLIP_OIDC_EMAIL_CLAIM")
    argon2_time_cost: int = Field(3, ge=1, le=20, validation_alias="FLIP_ARGON2_TIME_COST")
    argon2_memory_kib: int = Field(65536, ge=1024, le=4 * 1024 * 1024, validation_alias="FLIP_ARGON2_MEMORY_KIB")
    argon2_parallelism: int = Field(4, ge=1, le=16, validation_alias="FLIP_ARGON2_PARALLELISM")
    rate_limit_trust_per_min: int = Field(600, ge=1, validation_alias="FLIP_RATE_LIMIT_TRUST_PER_MIN")
    worker_in_process: bool = Field(True, validation_alias="FLIP_WORKER_IN_PROCESS")
    worker_interval_s: float = Field(10.0, gt=0, le=3600, validation_alias="FLIP_WORKER_INTERVAL_S")
    expose_docs: bool = Field(True, validation_alias="FLIP_EXPOSE_DOCS")
    db_pool_size: int = Field(10, ge=1, le=200, validation_alias="FLIP_DB_POOL_SIZE")
    # The disclosure threshold the hub asks trusts for; each trust applies max(its own, this), so the hub
    # can raise a trust's threshold but never lower it.
    cohort_min_k: int = Field(DEFAULT_MIN_K, ge=1, le=MAX_K, validation_alias="FLIP_COHORT_MIN_K")
    # How often the worker asks a trust for a fresh status of an imaging import that is not complete yet;
    # a status older than 5x this is shown as stale ("last known").
    imaging_refresh_s: float = Field(30.0, gt=0, le=86400, validation_alias="FLIP_IMAGING_REFRESH_S")
    # Uploaded files (model code, configs, checkpoints): "local" keeps them under object_store_dir and
    # streams downloads through the hub; "s3" keeps them in a bucket and hands out presigned URLs.
    object_store: Literal["local", "s3"] = Field("local", validation_alias="FLIP_OBJECT_STORE")
    object_store_dir: Path = Field(
        # state_dir is absent from ``data`` only when it failed validation, which is reported anyway.
        default_factory=lambda data: Path(data.get("state_dir") or default_state_dir()) / "objects",
        validation_alias="FLIP_OBJECT_STORE_DIR",
    )
    s3_bucket: str | None = Field(None, min_length=1, validation_alias="FLIP_S3_BUCKET")
    s3_prefix: str = Field("", validation_alias="FLIP_S3_PREFIX")
    s3_region: str | None = Field(None, validation_alias="FLIP_S3_REGION")
    s3_endpoint_url: str | None = Field(None, validation_alias="FLIP_S3_ENDPOINT_URL")
    upload_max_bytes: int = Field(512 * 1024 * 1024, ge=1, validation_alias="FLIP_UPLOAD_MAX_BYTES")
    presign_ttl_s: int = Field(300, ge=10, le=3600, validation_alias="FLIP_PRESIGN_TTL_S")
    # A file still SCANNING after this long is assumed abandoned (worker died) and scanned again.
    scan_stuck_s: int = Field(600, ge=60, le=86400, validation_alias="FLIP_SCAN_STUCK_S")
    # A training job no FL net has taken after this long becomes ERROR (no job stays QUEUED forever).
    fl_queue_timeout_s: float = Field(86400.0, gt=0, le=30 * 86400, validation_alias="FLIP_FL_QUEUE_TIMEOUT_S")
    # The watchdog's bounds on a job an FL net took: submitted within FLIP_FL_PREPARE_TIMEOUT_S; no sign of
    # life (event, or the net answering for the run) for FLIP_FL_RUN_SILENCE_S; a run the net says ended
    # without reporting its end within FLIP_FL_REPORT_GRACE_S; and no run longer than FLIP_FL_RUN_MAX_S.
    fl_prepare_timeout_s: float = Field(600.0, gt=0, le=86400, validation_alias="FLIP_FL_PREPARE_TIMEOUT_S")
    fl_run_silence_s: float = Field(900.0, gt=0, le=7 * 86400, validation_alias="FLIP_FL_RUN_SILENCE_S")
    fl_report_grace_s: float = Field(60.0, gt=0, le=86400, validation_alias="FLIP_FL_REPORT_GRACE_S")
    fl_run_max_s: float = Field(7 * 86400.0, gt=0, le=90 * 86400, validation_alias="FLIP_FL_RUN_MAX_S")

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("object_store_dir")
    @classmethod
    def _absolute_object_store_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _oidc_is_complete(self) -> HubSettings:
        if (self.oidc_jwks_url is None) != (self.oidc_issuer is None):
            raise ValueError("FLIP_OIDC_JWKS_URL and FLIP_OIDC_ISSUER must be set together")
        return self

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> HubSettings:
        if self.env is Environment.PRODUCTION:
            missing = [
                name
                for name, value in (
                    ("FLIP_JWT_SECRET", self.jwt_secret),
                    ("FLIP_DATA_KEY", self.data_key),
                    ("DATABASE_URL", self.database_url),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"production mode requires {', '.join(missing)} to be set")
            if self.mfa_required is False:
                raise ValueError("FLIP_MFA_REQUIRED=false is a development switch; it is refused in production")
        return self

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> HubSettings:
        if self.object_store == "s3" and self.s3_bucket is None:
            raise ValueError("FLIP_OBJECT_STORE=s3 requires FLIP_S3_BUCKET to be set")
        return self

    @cached_property
    def _dev_secrets(self) -> dict[str, str]:
        """Development secrets persisted under the state dir so that every local process agrees."""
        path = self.state_dir / "dev-secrets.json"
        if path.exists():
            data: dict[str, str] = json.loads(path.read_text())
            return data
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {"jwt_secret": secrets.token_urlsafe(48), "data_key": encode_key(new_key())}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        try:
            os.link(tmp, path)  # atomic "create if absent": a concurrent process may have won
        except FileExistsError:
            tmp.unlink()
            existing: dict[str, str] = json.loads(path.read_text())
            return existing
        tmp.unlink()
        return data

    def jwt_secret_value(self) -> str:
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return self._dev_secrets["jwt_secret"]

    def data_key_bytes(self) -> bytes:
        """The hub's key for secrets at rest (TOTP secrets, wrapped trust payload keys)."""
        text = self.data_key.get_secret_value() if self.data_key is not None else self._dev_secrets["data_key"]
        try:
            return decode_key(text)
        except Exception as exc:
            raise ConfigError(f"FLIP_DATA_KEY is invalid: {exc}") from exc
