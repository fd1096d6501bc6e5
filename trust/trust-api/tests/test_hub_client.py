"""The hub client: backoff bounds and jitter, and how each kind of hub answer is classified.

Transient hub failures (a 503, a dropped connection, a 429 with ``Retry-After``) cannot be produced on
demand by the real hub, so these tests answer through ``httpx.MockTransport``; the round trips against
the real hub are in ``test_agent_hub.py``.
"""

from __future__ import annotations

import random
import statistics
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from flip_core.contract import PROTOCOL_VERSION, TrustKit
from flip_core.crypto import encode_key, new_key
from flip_core.tasks import LeaseRequest, TaskResult
from flip_trust_api.errors import FatalHubError
from flip_trust_api.hub_client import (
    RETRY_AFTER_CAP_S,
    Backoff,
    HubClient,
    HubRejected,
    HubUnavailable,
    StaleLease,
    parse_retry_after,
)

KIT = TrustKit(
    hub_url="http://hub.test/",
    trust_id=uuid.uuid4(),
    trust_code="T1",
    trust_name="Trust One",
    api_key="flip_tk_" + "k" * 40,
    payload_key_id="trust-t1-1",
    payload_key=encode_key(new_key()),
    internal_key="flip_ik_" + "i" * 40,
)
RESULT = TaskResult(lease_token="l" * 43, outcome="completed", result={"ok": True})


def test_backoff_ceiling_doubles_from_half_a_second_up_to_thirty() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.ceiling(10_000) == 30


def test_backoff_is_full_jitter_within_bounds() -> None:
    backoff = Backoff(rng=random.Random(7))
    for retry in range(10):
        delays = [backoff.delay(retry) for _ in range(500)]
        ceiling = backoff.ceiling(retry)
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the whole range, not clustered at the ceiling.
        assert min(delays) < 0.1 * ceiling
        assert max(delays) > 0.9 * ceiling
        assert 0.4 * ceiling < statistics.mean(delays) < 0.6 * ceiling


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base_s=0)
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base_s=2, cap_s=1)


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after("100000") == RETRY_AFTER_CAP_S
    assert parse_retry_after(format_datetime(now + timedelta(seconds=12), usegmt=True), now) == 12
    assert parse_retry_after(format_datetime(now - timedelta(seconds=12), usegmt=True), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


class Script:
    """Answers requests in order and records them; records the sleeps the client asked for."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def client(self) -> HubClient:
        return HubClient(
            KIT,
            transport=httpx.MockTransport(self.handler),
            sleep=self.sleep,
            backoff=Backoff(rng=random.Random(1)),
        )


def _ack(status: str = "COMPLETED", duplicate: bool = False) -> httpx.Response:
    return httpx.Response(200, json={"task_id": str(uuid.uuid4()), "status": status, "duplicate": duplicate})


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"detail": f"{code} happened", "code": code}, headers=headers)


async def test_every_request_carries_the_key_and_protocol_version() -> None:
    script = Script(_ack())
    async with script.client() as client:
        await client.post_result(uuid.uuid4(), RESULT)
    (request,) = script.requests
    assert request.url.path.startswith("/api/trust/tasks/")
    assert request.headers["X-Trust-Key"] == KIT.api_key
    assert request.headers["X-Flip-Protocol"] == PROTOCOL_VERSION
    assert request.headers["Content-Type"] == "application/json"


async def test_connection_errors_and_5xx_are_retried_with_growing_jittered_delays() -> None:
    script = Script(
        httpx.ConnectError("refused"),
        _error(503, "unavailable"),
        httpx.ReadTimeout("slow"),
        _error(500, "internal_error"),
        _ack(),
    )
    async with script.client() as client:
        ack = await client.post_result(uuid.uuid4(), RESULT)
    assert ack.status.value == "COMPLETED"
    assert len(script.requests) == 5
    ceilings = [Backoff().ceiling(n) for n in range(4)]
    assert len(script.sleeps) == 4
    assert all(0 <= s <= c for s, c in zip(script.sleeps, ceilings, strict=True))


async def test_429_honours_retry_after() -> None:
    script = Script(_error(429, "rate_limited", {"Retry-After": "3"}), _ack())
    async with script.client() as client:
        await client.post_result(uuid.uuid4(), RESULT)
    assert script.sleeps == [3.0]


async def test_attempts_run_out_as_hub_unavailable() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused"), httpx.ConnectError("refused"))
    async with script.client() as client:
        with pytest.raises(HubUnavailable, match="ConnectError"):
            await client.post_result(uuid.uuid4(), RESULT, attempts=3)
    assert len(script.requests) == 3
    assert len(script.sleeps) == 2


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (_error(401, "invalid_trust_key"), FatalHubError),
        (_error(403, "trust_disabled"), FatalHubError),
        (_error(400, "protocol_unsupported"), FatalHubError),
        (_error(409, "stale_lease"), StaleLease),
        (_error(404, "task_not_found"), HubRejected),
        (_error(422, "result_too_large"), HubRejected),
    ],
)
async def test_refusals_are_not_retried(response: httpx.Response, expected: type[Exception]) -> None:
    script = Script(response)
    async with script.client() as client:
        with pytest.raises(expected) as caught:
            await client.post_result(uuid.uuid4(), RESULT)
    assert len(script.requests) == 1
    assert script.sleeps == []
    if isinstance(caught.value, HubRejected | FatalHubError):
        assert caught.value.code == response.json()["code"]


async def test_fatal_errors_say_what_the_hub_said() -> None:
    script = Script(_error(401, "invalid_trust_key"))
    async with script.client() as client:
        with pytest.raises(FatalHubError, match=r"HTTP 401, invalid_trust_key\): invalid_trust_key happened"):
            await client.whoami()


async def test_a_lease_poll_asks_the_hub_to_wait_and_waits_longer_itself() -> None:
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["wait"] = request.url.params["wait"]
        seen["timeout"] = request.extensions["timeout"]
        body = {"trust_id": str(KIT.trust_id), "tasks": [], "server_time": datetime.now(UTC).isoformat()}
        return httpx.Response(200, json=body)

    async with HubClient(KIT, transport=httpx.MockTransport(handler), timeout_s=10) as client:
        response = await client.lease(LeaseRequest(), wait_s=99)
    assert response.tasks == []
    assert seen["wait"] == "25"  # clamped to the protocol's maximum
    timeouts = seen["timeout"]
    assert isinstance(timeouts, dict)
    assert timeouts["read"] == 35


async def test_an_unexpected_body_is_treated_as_transient() -> None:
    script = Script(httpx.Response(200, text="<html>maintenance</html>"), _ack())
    async with script.client() as client:
        await client.post_result(uuid.uuid4(), RESULT)
    assert len(script.requests) == 2
