"""Writing trust kits: private, atomic, never silently replaced."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from flip_cli.kits import KitExistsError, write_kit
from flip_core.contract import TrustKit


def _kit(code: str = "ELSE") -> TrustKit:
    return TrustKit(
        hub_url="https://hub.example.org",
        trust_id=uuid.uuid4(),
        trust_code=code,
        trust_name=f"Trust {code}",
        api_key="flip_trust_" + "a" * 32,
        payload_key_id="trust-else-1",
        payload_key="b" * 44,
        internal_key="flip_internal_" + "c" * 32,
    )


def test_kit_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    kit = _kit()
    old = os.umask(0)
    try:
        path = write_kit(tmp_path / "new" / "kit.env", kit)
    finally:
        os.umask(old)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert TrustKit.from_env(path.read_text()) == kit


def test_existing_kit_is_refused_and_kept(tmp_path: Path) -> None:
    path = write_kit(tmp_path / "kit.env", _kit("AAA"))

    with pytest.raises(KitExistsError):
        write_kit(path, _kit("BBB"))

    assert TrustKit.from_env(path.read_text()).trust_code == "AAA"
    assert [p.name for p in tmp_path.iterdir()] == ["kit.env"]


def test_overwrite_replaces_the_kit(tmp_path: Path) -> None:
    path = write_kit(tmp_path / "kit.env", _kit("AAA"))

    write_kit(path, _kit("BBB"), overwrite=True)

    assert TrustKit.from_env(path.read_text()).trust_code == "BBB"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
