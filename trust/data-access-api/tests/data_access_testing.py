"""Helpers shared by the data-access-api tests (conftest names clash across suites, so they live here)."""

from __future__ import annotations

import uuid
from pathlib import Path

from flip_data_access.gate import DisclosureGate
from flip_data_access.omop import OmopDatabase
from flip_data_access.service import CohortService
from flip_data_access.snapshot import SnapshotStore

SEED = 0x5EED_F11B


def make_service(dsn: str, root: Path, *, k: int = 10, noise: int = 0, timeout_s: float = 30) -> CohortService:
    return CohortService(
        db=OmopDatabase(dsn, pool_size=2, statement_timeout_s=timeout_s, connect_timeout_s=2),
        gate=DisclosureGate(k, noise),
        snapshots=SnapshotStore(root / "snapshots", max_bytes=50 * 1024 * 1024),
        seed=SEED,
    )


def new_id() -> uuid.UUID:
    return uuid.uuid4()
