"""Handlers: the ping handler, payloads that must be refused, safe errors, and concurrency limits."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flip_core.crypto import Envelope, Keyring, new_key
from flip_core.tasks import MAX_RESULT_BYTES, LeasedTask, PingResult, TaskType, payload_purpose
from flip_trust_api.handlers import (
    ConcurrencyLimits,
    HandlerRegistry,
    TaskContext,
    TaskFailure,
    registry,
)

KID = "trust-t1-1"


@pytest.fixture
def keyring() -> Keyring:
    return Keyring({KID: new_key()}, current=KID)


def _task(envelope: Envelope, task_type: TaskType = TaskType.PING) -> LeasedTask:
    now = datetime.now(UTC)
    return LeasedTask(
        id=uuid.uuid4(),
        type=task_type,
        attempt=1,
        lease_token="t" * 43,
        lease_expires_at=now + timedelta(seconds=120),
        payload=envelope,
        created_at=now,
    )


def _ctx(task: LeasedTask) -> TaskContext:
    return TaskContext(
        task_id=task.id,
        task_type=task.type,
        attempt=task.attempt,
        trust_id=uuid.uuid4(),
        trust_code="T1",
        agent_version="9.9.9",
    )


async def _run(reg: HandlerRegistry, keyring: Keyring, envelope: Envelope, task_type: TaskType = TaskType.PING) -> Any:
    task = _task(envelope, task_type)
    return await reg.execute(task, keyring, _ctx(task))


def _ping_envelope(keyring: Keyring, message: str = "hello trust") -> Envelope:
    payload = {"message": message, "sent_at": datetime.now(UTC).isoformat()}
    return keyring.seal_json(payload_purpose(TaskType.PING), payload)


async def test_ping_echoes_the_message(keyring: Keyring) -> None:
    outcome = await _run(registry, keyring, _ping_envelope(keyring))
    assert outcome.outcome == "completed"
    result = PingResult.model_validate(outcome.result)
    assert result.echo == "hello trust"
    assert result.agent_version == "9.9.9"
    wire = outcome.to_result("t" * 43)
    assert wire.outcome == "completed"
    assert wire.error is None


async def test_a_tampered_payload_is_rejected(keyring: Keyring) -> None:
    envelope = _ping_envelope(keyring)
    ct = bytearray(base64.b64decode(envelope.ct))
    ct[0] ^= 0x01
    tampered = envelope.model_copy(update={"ct": base64.b64encode(bytes(ct)).decode()})
    outcome = await _run(registry, keyring, tampered)
    assert outcome.outcome == "failed"
    assert outcome.error.code == "payload_rejected"
    assert "failed authentication" in outcome.error.detail
    assert outcome.error.retryable is False


async def test_a_payload_under_an_unknown_key_id_is_rejected(keyring: Keyring) -> None:
    other = Keyring({"trust-other-1": new_key()}, current="trust-other-1")
    outcome = await _run(registry, keyring, _ping_envelope(other))
    assert outcome.error.code == "payload_rejected"
    assert "trust-other-1" in outcome.error.detail


async def test_a_payload_sealed_for_another_purpose_is_rejected(keyring: Keyring) -> None:
    sealed = keyring.seal_json(payload_purpose(TaskType.COHORT_QUERY), {"message": "x", "sent_at": "2024-01-01T00:00Z"})
    outcome = await _run(registry, keyring, sealed)
    assert outcome.error.code == "payload_rejected"
    assert "task:ping" in outcome.error.detail


async def test_a_payload_that_is_not_an_object_is_rejected(keyring: Keyring) -> None:
    sealed = keyring.seal_json(payload_purpose(TaskType.PING), ["not", "an", "object"])
    outcome = await _run(registry, keyring, sealed)
    assert outcome.error.code == "payload_rejected"


async def test_an_invalid_ping_payload_names_the_field_but_not_the_value(keyring: Keyring) -> None:
    sealed = keyring.seal_json(payload_purpose(TaskType.PING), {"message": "patient 1234", "sent_at": "not a date"})
    outcome = await _run(registry, keyring, sealed)
    assert outcome.error.code == "invalid_payload"
    assert "sent_at" in outcome.error.detail
    assert "not a date" not in outcome.error.detail
    assert "patient 1234" not in outcome.error.detail


async def test_unexpected_errors_reach_the_hub_only_as_internal_error(
    keyring: Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    reg = HandlerRegistry()

    @reg.handler(TaskType.PING)
    async def broken(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        raise RuntimeError("connection to 10.1.2.3 failed for user omop_reader")

    outcome = await _run(reg, keyring, _ping_envelope(keyring))
    assert outcome.error.code == "internal_error"
    assert "10.1.2.3" not in outcome.error.detail
    assert "omop_reader" not in outcome.error.detail
    assert "10.1.2.3" in caplog.text  # kept in the trust's own log


async def test_task_failure_carries_code_detail_and_retryable(keyring: Keyring) -> None:
    reg = HandlerRegistry()

    @reg.handler(TaskType.PING)
    async def busy(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        raise TaskFailure("omop_unavailable", "the OMOP database did not answer", retryable=True)

    outcome = await _run(reg, keyring, _ping_envelope(keyring))
    assert outcome.error.model_dump() == {
        "code": "omop_unavailable",
        "detail": "the OMOP database did not answer",
        "retryable": True,
    }


def test_task_failure_codes_are_checked() -> None:
    with pytest.raises(ValueError, match="must match"):
        TaskFailure("Not A Code")


async def test_results_are_checked_for_size_and_shape(keyring: Keyring) -> None:
    reg = HandlerRegistry()
    answers: list[Any] = [{"blob": "x" * (MAX_RESULT_BYTES + 1)}, ["not", "a", "dict"], {"when": datetime.now(UTC)}]

    @reg.handler(TaskType.PING)
    async def producer(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        answer: dict[str, Any] = answers.pop(0)
        return answer

    codes = [(await _run(reg, keyring, _ping_envelope(keyring))).error.code for _ in range(3)]
    assert codes == ["result_too_large", "internal_error", "internal_error"]


async def test_a_type_without_handler_fails_cleanly(keyring: Keyring) -> None:
    sealed = keyring.seal_json(payload_purpose(TaskType.SYNC_USER), {})
    outcome = await _run(HandlerRegistry(), keyring, sealed, TaskType.SYNC_USER)
    assert outcome.error.code == "unsupported_task_type"


def test_a_type_has_one_handler_and_sane_limits() -> None:
    reg = HandlerRegistry()

    async def handler(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {}

    reg.register(TaskType.PING, handler)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(TaskType.PING, handler)
    with pytest.raises(ValueError, match="concurrency"):
        reg.register(TaskType.SYNC_USER, handler, concurrency=0)
    reg.replace(TaskType.PING, handler, concurrency=2)
    assert reg.concurrency(TaskType.PING) == 2
    # copies are independent
    copy = reg.copy()
    copy.register(TaskType.SYNC_USER, handler)
    assert reg.types == [TaskType.PING]


def test_builtin_limits_and_configured_overrides() -> None:
    assert registry.concurrency(TaskType.PING) == 8
    reg = registry.copy()

    async def handler(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {}

    reg.register(TaskType.COHORT_QUERY, handler)
    limits = ConcurrencyLimits.for_registry(reg, {TaskType.COHORT_QUERY: 2})
    assert limits.free() == {TaskType.PING: 8, TaskType.COHORT_QUERY: 2}
    assert limits.limit(TaskType.SYNC_USER) == 0


def test_concurrency_limits_hold_per_type() -> None:
    limits = ConcurrencyLimits({TaskType.PING: 2, TaskType.COHORT_QUERY: 1})
    assert limits.try_acquire(TaskType.PING)
    assert limits.try_acquire(TaskType.PING)
    assert not limits.try_acquire(TaskType.PING)
    assert limits.try_acquire(TaskType.COHORT_QUERY)
    assert not limits.try_acquire(TaskType.COHORT_QUERY)
    assert not limits.try_acquire(TaskType.SYNC_USER)  # no handler, no slot
    assert limits.free() == {TaskType.PING: 0, TaskType.COHORT_QUERY: 0}
    assert limits.in_use() == {TaskType.PING: 2, TaskType.COHORT_QUERY: 1}
    limits.release(TaskType.PING)
    assert limits.free()[TaskType.PING] == 1
    assert limits.try_acquire(TaskType.PING)
    limits.release(TaskType.COHORT_QUERY)
    with pytest.raises(RuntimeError):
        limits.release(TaskType.COHORT_QUERY)
    with pytest.raises(ValueError, match="between"):
        ConcurrencyLimits({TaskType.PING: 0})
