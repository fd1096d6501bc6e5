"""The hub<->trust wire contract: every message that crosses the boundary is a model defined here.

Both the hub and the trust services import these models; neither side writes its own copy of a
payload shape.  ``PROTOCOL_VERSION`` travels with every machine request and the hub refuses unknown
major versions.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROTOCOL_VERSION = "1.0"
PROTOCOL_HEADER = "X-Flip-Protocol"
TRUST_KEY_HEADER = "X-Trust-Key"
INTERNAL_KEY_HEADER = "X-Internal-Service-Key"
# What FL trainers (the trainer SDK, inside a job at a trust) present to their own trust's services.
TRAINER_KEY_HEADER = "X-FLIP-Trainer-Key"
REQUEST_ID_HEADER = "X-Request-ID"
KIT_ENV_PREFIX = "FLIP_TRUST_"


def protocol_major(version: str) -> int:
    """The major component of a ``MAJOR.MINOR`` protocol version; raises ValueError if malformed."""
    major, _, minor = version.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        raise ValueError(f"malformed protocol version {version!r}")
    return int(major)


class ErrorBody(BaseModel):
    """The one error shape every FLIP HTTP service returns: a human message and a machine code."""

    detail: str
    code: str


class TrustIdentity(BaseModel):
    """What the hub resolved a trust API key to; the agent exits if it differs from its kit."""

    model_config = ConfigDict(extra="forbid")

    trust_id: uuid.UUID
    code: str
    name: str
    protocol_version: str = PROTOCOL_VERSION


class ServiceState(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"


class TrustKit(BaseModel):
    """Everything a trust needs to connect to the hub, written once at registration as an env file."""

    model_config = ConfigDict(extra="forbid")

    hub_url: str = Field(min_length=1, max_length=2048)
    trust_id: uuid.UUID
    trust_code: str = Field(min_length=1, max_length=32)
    trust_name: str = Field(min_length=1, max_length=200)
    api_key: str = Field(min_length=16, max_length=256)
    payload_key_id: str = Field(min_length=1, max_length=128)
    payload_key: str = Field(min_length=1, max_length=256)
    internal_key: str = Field(min_length=16, max_length=256)
    protocol_version: str = PROTOCOL_VERSION

    def to_env(self) -> str:
        """Render as an env file (KEY=value lines); values never contain newlines or quotes."""
        lines = [
            "# FLIP trust kit — keep this file secret (mode 0600). It is shown only once.",
            f"# Trust: {self.trust_name} ({self.trust_code})",
        ]
        for name, value in self.model_dump(mode="json").items():
            lines.append(f"{KIT_ENV_PREFIX}{name.upper()}={value}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_env(cls, text: str) -> TrustKit:
        """Parse an env-format kit; unknown FLIP_TRUST_* keys are refused, other lines ignored."""
        values: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key = key.strip()
            if key.startswith("export "):
                key = key[len("export ") :].strip()
            if key.startswith(KIT_ENV_PREFIX):
                values[key[len(KIT_ENV_PREFIX) :].lower()] = value.strip().strip('"').strip("'")
        return cls.model_validate(values)


class KitFileError(ValueError):
    """A trust kit file that cannot be read or is not a valid kit; the message names the fix."""


def read_kit_file(path: Path | None, setting: str) -> TrustKit:
    """The trust kit at ``path``; ``setting`` names the environment variable that could have given it."""
    if path is None:
        raise KitFileError(f"no trust kit given: pass --kit FILE or set {setting}")
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KitFileError(f"cannot read the trust kit {path}: {exc.strerror or exc}") from exc
    try:
        return TrustKit.from_env(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'kit'}: {e['msg']}" for e in exc.errors())
        raise KitFileError(f"{path} is not a valid trust kit ({problems})") from exc
