"""Trust liveness derived from heartbeats and the health snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flip_api.db.models import Trust
from flip_api.services.trusts import HEARTBEAT_TIMEOUT, TrustStatus, trust_status

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _trust(seconds_ago: float | None, services: dict[str, object] | None = None) -> Trust:
    return Trust(
        name="t",
        code="T",
        last_heartbeat=None if seconds_ago is None else NOW - timedelta(seconds=seconds_ago),
        services_health=None if services is None else {"services": services},
    )


def test_status_from_heartbeat_age_and_services() -> None:
    assert trust_status(_trust(None), NOW) is TrustStatus.NEVER_SEEN
    assert trust_status(_trust(5), NOW) is TrustStatus.ONLINE
    assert trust_status(_trust(HEARTBEAT_TIMEOUT.total_seconds() + 1), NOW) is TrustStatus.OFFLINE
    healthy = {"omop": {"state": "healthy"}, "pacs": {"state": "healthy"}, "imaging": {"state": "unknown"}}
    assert trust_status(_trust(5, healthy), NOW) is TrustStatus.ONLINE
    degraded = {"omop": {"state": "healthy"}, "pacs": {"state": "down"}}
    assert trust_status(_trust(5, degraded), NOW) is TrustStatus.DEGRADED
    # A stale heartbeat wins over a stale snapshot: offline, not degraded.
    assert trust_status(_trust(600, degraded), NOW) is TrustStatus.OFFLINE
