"""Password hashing (argon2), JWT access tokens, TOTP, and encryption of secrets at rest."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from flip_core.crypto import CryptoError, Envelope, open_bytes, seal_bytes

_hasher = PasswordHasher()
# Verified against when an email is unknown, so a miss costs the same time as a wrong password.
_dummy_hash = _hasher.hash(secrets.token_urlsafe(16))


def configure_password_hashing(time_cost: int, memory_kib: int, parallelism: int) -> None:
    """Set the argon2 cost for new hashes (existing hashes carry their own parameters)."""
    global _hasher, _dummy_hash
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
    _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))


JWT_ALGORITHM = "HS256"
JWT_ISSUER = "flip-hub"
TokenKind = Literal["access", "mfa"]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant-work check; an absent hash still costs one argon2 verification."""
    try:
        return _hasher.verify(password_hash or _dummy_hash, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_password() -> str:
    """A random initial password (shown once to the admin who creates a user)."""
    return secrets.token_urlsafe(12)


def issue_token(
    secret: str,
    *,
    kind: TokenKind,
    user_id: uuid.UUID,
    session_id: uuid.UUID | None,
    ttl_s: int,
    extra: dict[str, Any] | None = None,
) -> tuple[str, datetime]:
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s)
    claims: dict[str, Any] = {
        "iss": JWT_ISSUER,
        "sub": str(user_id),
        "typ": kind,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": secrets.token_hex(8),
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    if extra:
        claims.update(extra)
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM), expires


class InvalidToken(Exception):
    pass


def decode_token(secret: str, token: str, *, kind: TokenKind) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "sub", "typ", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("token invalid") from exc
    if claims.get("typ") != kind:
        raise InvalidToken("wrong token type")
    return claims


def new_refresh_token() -> str:
    return secrets.token_urlsafe(48)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- TOTP -------------------------------------------------------------------------------------------


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str, issuer: str) -> str:
    return str(pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer))


def totp_qr_svg(uri: str) -> str:
    """The provisioning URI as an SVG QR code, for authenticator apps."""
    return str(segno.make(uri, error="m").svg_inline(scale=4))


# --- secrets at rest --------------------------------------------------------------------------------


def seal_secret(data_key: bytes, purpose: str, plaintext: bytes) -> bytes:
    """Encrypt a secret for storage in the database under the hub data key."""
    return seal_bytes(data_key, "hub-data", purpose, plaintext).model_dump_json().encode()


def open_secret(data_key: bytes, purpose: str, stored: bytes) -> bytes:
    try:
        envelope = Envelope.model_validate_json(stored)
    except ValueError as exc:
        raise CryptoError("stored secret is not an envelope") from exc
    return open_bytes(data_key, envelope, purpose)
