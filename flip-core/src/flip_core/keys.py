"""Minting, hashing and comparing secret keys (trust API keys, internal service keys).

Keys are 256-bit random values rendered as URL-safe text with a short prefix that says what they are
for.  Because they carry full entropy, a plain SHA-256 is a sufficient one-way hash for storage; lookups
compare hashes with :func:`hmac.compare_digest` so timing never depends on how much of a key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TRUST_API_KEY_PREFIX = "flip_tk_"
INTERNAL_KEY_PREFIX = "flip_ik_"
SERVICE_KEY_PREFIX = "flip_sk_"


def mint_key(prefix: str) -> str:
    """A new random key with a purpose prefix (32 random bytes, URL-safe)."""
    return prefix + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key: what the hub stores instead of the key itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    """Constant-time check of a presented key against a stored hash."""
    return hmac.compare_digest(hash_key(key), stored_hash)
