"""AES-256-GCM payload envelopes with a key id and a purpose bound as associated data.

An envelope is the JSON object ``{"v": 1, "kid": ..., "nonce": ..., "ct": ...}`` (nonce and ciphertext
base64).  The key id and the caller's *purpose* string (for example ``task:cohort_query``) are both
authenticated, so a payload sealed for one purpose, or under one key id, never opens for another.
A :class:`Keyring` holds several keys so that rotation can keep old ciphertext readable.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field

ENVELOPE_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12


class CryptoError(Exception):
    """Raised when a key is malformed or an envelope cannot be opened (tampered, wrong key or purpose)."""


class Envelope(BaseModel):
    """The serialised form of one sealed payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(ENVELOPE_VERSION, ge=1, le=1)
    kid: str = Field(min_length=1, max_length=128)
    nonce: str = Field(min_length=1, max_length=64)
    ct: str = Field(min_length=1)


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    """Base64 text form of a key, as written to kit files and environment variables."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Parse a base64 key; it must decode to exactly 32 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("key is not valid base64") from exc
    if len(raw) != KEY_BYTES:
        raise CryptoError(f"key must decode to {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _aad(kid: str, purpose: str) -> bytes:
    return json.dumps({"v": ENVELOPE_VERSION, "kid": kid, "purpose": purpose}, sort_keys=True).encode()


def seal_bytes(key: bytes, kid: str, purpose: str, plaintext: bytes) -> Envelope:
    """Encrypt ``plaintext`` under ``key``; ``kid`` and ``purpose`` are authenticated, not secret."""
    if len(key) != KEY_BYTES:
        raise CryptoError(f"key must be {KEY_BYTES} bytes")
    nonce = os.urandom(NONCE_BYTES)
    ct = AESGCM(key).encrypt(nonce, plaintext, _aad(kid, purpose))
    return Envelope(
        v=ENVELOPE_VERSION,
        kid=kid,
        nonce=base64.b64encode(nonce).decode("ascii"),
        ct=base64.b64encode(ct).decode("ascii"),
    )


def open_bytes(key: bytes, envelope: Envelope, purpose: str) -> bytes:
    """Decrypt an envelope; raises :class:`CryptoError` on any mismatch (key, kid, purpose, tampering)."""
    try:
        nonce = base64.b64decode(envelope.nonce, validate=True)
        ct = base64.b64decode(envelope.ct, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("envelope is not valid base64") from exc
    if len(nonce) != NONCE_BYTES:
        raise CryptoError("envelope nonce has the wrong length")
    try:
        return AESGCM(key).decrypt(nonce, ct, _aad(envelope.kid, purpose))
    except InvalidTag as exc:
        raise CryptoError("envelope failed authentication (wrong key, purpose or tampered)") from exc


class Keyring:
    """Keys by id; one of them is the current key used for sealing, all of them open."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise CryptoError(f"current key id {current!r} is not in the keyring")
        for kid, key in keys.items():
            if len(key) != KEY_BYTES:
                raise CryptoError(f"key {kid!r} must be {KEY_BYTES} bytes")
        self._keys = dict(keys)
        self.current = current

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def seal(self, purpose: str, plaintext: bytes) -> Envelope:
        return seal_bytes(self._keys[self.current], self.current, purpose, plaintext)

    def open(self, envelope: Envelope, purpose: str) -> bytes:
        key = self._keys.get(envelope.kid)
        if key is None:
            raise CryptoError(f"unknown key id {envelope.kid!r}")
        return open_bytes(key, envelope, purpose)

    def seal_json(self, purpose: str, payload: Any) -> Envelope:
        return self.seal(purpose, json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())

    def open_json(self, envelope: Envelope, purpose: str) -> Any:
        return json.loads(self.open(envelope, purpose))
