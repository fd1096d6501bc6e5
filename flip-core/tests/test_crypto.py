import pytest
from pydantic import ValidationError

from flip_core.crypto import (
    CryptoError,
    Envelope,
    Keyring,
    decode_key,
    encode_key,
    new_key,
    open_bytes,
    seal_bytes,
)


def test_round_trip_binds_kid_and_purpose() -> None:
    key = new_key()
    env = seal_bytes(key, "k1", "task:cohort_query", b"SELECT 1")
    assert env.v == 1
    assert env.kid == "k1"
    assert b"SELECT" not in env.ct.encode()
    assert open_bytes(key, env, "task:cohort_query") == b"SELECT 1"
    with pytest.raises(CryptoError, match="authentication"):
        open_bytes(key, env, "task:persist_cohort")
    relabelled = env.model_copy(update={"kid": "k2"})
    with pytest.raises(CryptoError):
        open_bytes(key, relabelled, "task:cohort_query")


def test_tampered_ciphertext_and_wrong_key_fail_closed() -> None:
    key = new_key()
    env = seal_bytes(key, "k1", "p", b"payload")
    raw = bytearray(env.ct.encode())
    raw[5] = ord("A") if raw[5] != ord("A") else ord("B")
    with pytest.raises(CryptoError):
        open_bytes(key, env.model_copy(update={"ct": raw.decode()}), "p")
    with pytest.raises(CryptoError):
        open_bytes(new_key(), env, "p")


def test_nonces_are_unique() -> None:
    key = new_key()
    nonces = {seal_bytes(key, "k", "p", b"x").nonce for _ in range(200)}
    assert len(nonces) == 200


def test_key_encoding_requires_32_bytes() -> None:
    key = new_key()
    assert decode_key(encode_key(key)) == key
    with pytest.raises(CryptoError, match="32 bytes"):
        decode_key(encode_key(b"short"))
    with pytest.raises(CryptoError, match="base64"):
        decode_key("not base64 !!")


def test_keyring_rotation_keeps_old_payloads_readable() -> None:
    old, new = new_key(), new_key()
    ring_v1 = Keyring({"t-1": old}, current="t-1")
    sealed_old = ring_v1.seal_json("task:x", {"a": 1})
    ring_v2 = Keyring({"t-1": old, "t-2": new}, current="t-2")
    sealed_new = ring_v2.seal_json("task:x", {"b": 2})
    assert sealed_new.kid == "t-2"
    assert ring_v2.open_json(sealed_old, "task:x") == {"a": 1}
    assert ring_v2.open_json(sealed_new, "task:x") == {"b": 2}
    with pytest.raises(CryptoError, match="unknown key id"):
        ring_v1.open(sealed_new, "task:x")
    with pytest.raises(CryptoError):
        Keyring({"a": old}, current="b")


def test_envelope_schema_rejects_unknown_version_and_fields() -> None:
    with pytest.raises(ValidationError, match="less than or equal"):
        Envelope.model_validate({"v": 2, "kid": "k", "nonce": "x", "ct": "y"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Envelope.model_validate({"v": 1, "kid": "k", "nonce": "x", "ct": "y", "extra": 1})
