import uuid

import pytest
from pydantic import ValidationError

from flip_core.contract import TrustKit, protocol_major
from flip_core.keys import TRUST_API_KEY_PREFIX, hash_key, key_matches, mint_key


def test_minted_keys_are_random_prefixed_and_hash_verifies() -> None:
    a, b = mint_key(TRUST_API_KEY_PREFIX), mint_key(TRUST_API_KEY_PREFIX)
    assert a != b
    assert a.startswith(TRUST_API_KEY_PREFIX)
    assert len(a) > 40
    digest = hash_key(a)
    assert len(digest) == 64
    assert a not in digest
    assert key_matches(a, digest)
    assert not key_matches(b, digest)


def _kit() -> TrustKit:
    return TrustKit(
        hub_url="https://hub.example.org",
        trust_id=uuid.uuid4(),
        trust_code="ELSE",
        trust_name="St Elsewhere",
        api_key=mint_key("flip_tk_"),
        payload_key_id="trust-else-1",
        payload_key="A" * 44,
        internal_key=mint_key("flip_ik_"),
    )


def test_kit_env_round_trip() -> None:
    kit = _kit()
    text = kit.to_env()
    assert "FLIP_TRUST_API_KEY=" in text
    assert TrustKit.from_env(text) == kit
    exported = "\n".join("export " + line if line.startswith("FLIP_") else line for line in text.splitlines())
    assert TrustKit.from_env(exported) == kit


def test_kit_refuses_unknown_and_missing_fields() -> None:
    text = _kit().to_env()
    with pytest.raises(ValidationError):
        TrustKit.from_env(text + "FLIP_TRUST_SURPRISE=1\n")
    missing = "\n".join(line for line in text.splitlines() if not line.startswith("FLIP_TRUST_API_KEY"))
    with pytest.raises(ValidationError):
        TrustKit.from_env(missing)


def test_protocol_major() -> None:
    assert protocol_major("1.0") == 1
    assert protocol_major("12") == 12
    with pytest.raises(ValueError, match="malformed"):
        protocol_major("v1")
