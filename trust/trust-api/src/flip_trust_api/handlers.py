"""Task handlers: one async function per task type, and the code that runs them safely.

A handler receives the task's decrypted payload (a dict) and a :class:`TaskContext`, and returns the
result dict — or raises :class:`TaskFailure` with a machine code, a detail fit for the hub and whether
another attempt might succeed.  Anything else it raises is logged here, in the trust, and reported to
the hub only as ``internal_error``: raw exception text never leaves the trust.

Payloads are opened with the trust's keyring for the purpose ``task:<type>``; a payload sealed under
an unknown key, for another purpose, or tampered with fails the task closed (``payload_rejected``)
without the handler ever seeing it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from flip_core.crypto import CryptoError, Keyring
from flip_core.tasks import (
    MAX_RESULT_BYTES,
    LeasedTask,
    PingPayload,
    PingResult,
    TaskError,
    TaskResult,
    TaskType,
    payload_purpose,
)

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 256
_CODE = re.compile(r"^[a-z0-9_.:-]{1,64}$")
_DETAIL_LIMIT = 2000


class TaskFailure(Exception):
    """Raised by a handler to fail its task with a safe, specific reason.

    ``code`` is a short machine code (``[a-z0-9_.:-]``, at most 64 characters), ``detail`` a message
    the hub may show to users (never row-level data), ``retryable`` whether another attempt may succeed.
    """

    def __init__(self, code: str, detail: str = "", *, retryable: bool = False) -> None:
        if not _CODE.match(code):
            raise ValueError(f"task failure code {code!r} must match {_CODE.pattern}")
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail[:_DETAIL_LIMIT]
        self.retryable = retryable


@dataclass(frozen=True)
class TrustServices:
    """Clients of the trust's own services that handlers may call (None when not configured)."""

    data_access: ServicePort | None = None
    imaging: ServicePort | None = None


class ServicePort(Protocol):
    """What handlers need of a client of one of the trust's services (see :mod:`flip_trust_api.service_clients`)."""

    async def post(self, path: str, body: BaseModel) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know about the task it runs and the agent running it."""

    task_id: uuid.UUID
    task_type: TaskType
    attempt: int
    trust_id: uuid.UUID
    trust_code: str
    agent_version: str
    services: TrustServices = field(default_factory=TrustServices)


Handler = Callable[[dict[str, Any], TaskContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Outcome:
    """What running a task produced, before it is addressed to a lease token."""

    outcome: Literal["completed", "failed"]
    result: dict[str, Any] | None = None
    error: TaskError | None = None

    @classmethod
    def failed(cls, code: str, detail: str = "", *, retryable: bool = False) -> Outcome:
        """A failed outcome with a safe error."""
        return cls("failed", error=TaskError(code=code, detail=detail[:_DETAIL_LIMIT], retryable=retryable))

    def to_result(self, lease_token: str) -> TaskResult:
        """The wire result for the lease currently held."""
        return TaskResult(lease_token=lease_token, outcome=self.outcome, result=self.result, error=self.error)


@dataclass(frozen=True)
class Registration:
    """A handler and its default concurrency limit."""

    task_type: TaskType
    handler: Handler
    concurrency: int


@dataclass
class HandlerRegistry:
    """Handlers by task type, registered with :meth:`handler`; :meth:`execute` runs one leased task."""

    _registrations: dict[TaskType, Registration] = field(default_factory=dict)

    def handler(self, task_type: TaskType, *, concurrency: int = DEFAULT_CONCURRENCY) -> Callable[[Handler], Handler]:
        """Decorator: register ``fn`` for ``task_type``, running at most ``concurrency`` at once by default."""

        def register(fn: Handler) -> Handler:
            self.register(task_type, fn, concurrency=concurrency)
            return fn

        return register

    def register(self, task_type: TaskType, fn: Handler, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        """Register ``fn`` for ``task_type``; a type has exactly one handler."""
        if task_type in self._registrations:
            raise ValueError(f"a handler for {task_type.value} is already registered")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        self._registrations[task_type] = Registration(task_type, fn, concurrency)

    def copy(self) -> HandlerRegistry:
        """An independent registry with the same handlers (to add or replace some, e.g. in tests)."""
        return HandlerRegistry(dict(self._registrations))

    def replace(self, task_type: TaskType, fn: Handler, *, concurrency: int | None = None) -> None:
        """Register ``fn`` for ``task_type`` in place of any handler already there."""
        previous = self._registrations.pop(task_type, None)
        limit = concurrency if concurrency is not None else previous.concurrency if previous else DEFAULT_CONCURRENCY
        self.register(task_type, fn, concurrency=limit)

    @property
    def types(self) -> list[TaskType]:
        """The task types this agent can run (the only ones it asks the hub for)."""
        return sorted(self._registrations)

    def concurrency(self, task_type: TaskType) -> int:
        """The default concurrency limit registered for ``task_type``."""
        return self._registrations[task_type].concurrency

    async def execute(self, task: LeasedTask, keyring: Keyring, ctx: TaskContext) -> Outcome:
        """Open the payload, run the handler, and turn whatever happens into a safe :class:`Outcome`."""
        registration = self._registrations.get(task.type)
        if registration is None:
            return Outcome.failed("unsupported_task_type", f"this trust agent has no handler for {task.type.value}")
        payload = _open_payload(task, keyring)
        if isinstance(payload, Outcome):
            return payload
        try:
            result = await registration.handler(payload, ctx)
        except TaskFailure as exc:
            log.info("task failed", extra={"code": exc.code, "retryable": exc.retryable})
            return Outcome.failed(exc.code, exc.detail, retryable=exc.retryable)
        except ValidationError as exc:
            # Describe where the payload was wrong, never the values (they may be sensitive).
            where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['type']}" for e in exc.errors())
            return Outcome.failed("invalid_payload", f"the {task.type.value} payload is not valid ({where})")
        except Exception:
            log.exception("task handler raised an unexpected error", extra={"task_type": task.type.value})
            return Outcome.failed("internal_error", "the trust agent hit an unexpected error; see its log")
        return _checked_result(task, result)


class ConcurrencyLimits:
    """Per-type slots: a task holds one from the moment it is accepted until its handler returns.

    The lease loop asks the hub only for types with a free slot, and never for more tasks than the
    fewest free slots among them, so a lease can never hand out more work than the limits allow.
    """

    def __init__(self, limits: Mapping[TaskType, int]) -> None:
        for task_type, limit in limits.items():
            if not 1 <= limit <= MAX_CONCURRENCY:
                raise ValueError(f"concurrency of {task_type.value} must be between 1 and {MAX_CONCURRENCY}")
        self._limits = dict(limits)
        self._in_use = dict.fromkeys(limits, 0)

    @classmethod
    def for_registry(cls, registry: HandlerRegistry, overrides: Mapping[TaskType, int]) -> ConcurrencyLimits:
        """Limits for every registered type: the configured override, else the handler's own default."""
        return cls({t: overrides.get(t, registry.concurrency(t)) for t in registry.types})

    def limit(self, task_type: TaskType) -> int:
        """The most tasks of this type that may run at once (0 for a type with no handler)."""
        return self._limits.get(task_type, 0)

    def free(self) -> dict[TaskType, int]:
        """Free slots per type."""
        return {t: self._limits[t] - self._in_use[t] for t in self._limits}

    def in_use(self) -> dict[TaskType, int]:
        """Slots held per type (types with none held are left out)."""
        return {t: n for t, n in self._in_use.items() if n}

    def try_acquire(self, task_type: TaskType) -> bool:
        """Take a slot for ``task_type`` if one is free."""
        if self._in_use.get(task_type, 0) >= self._limits.get(task_type, 0):
            return False
        self._in_use[task_type] += 1
        return True

    def release(self, task_type: TaskType) -> None:
        """Give back a slot taken with :meth:`try_acquire`."""
        if self._in_use.get(task_type, 0) <= 0:
            raise RuntimeError(f"no {task_type.value} slot is held")
        self._in_use[task_type] -= 1


def _open_payload(task: LeasedTask, keyring: Keyring) -> dict[str, Any] | Outcome:
    purpose = payload_purpose(task.type)
    try:
        payload = keyring.open_json(task.payload, purpose)
    except CryptoError as exc:
        log.warning("task payload rejected", extra={"kid": task.payload.kid, "purpose": purpose, "reason": str(exc)})
        return Outcome.failed(
            "payload_rejected", f"the payload could not be opened for {purpose} (key id {task.payload.kid!r}): {exc}"
        )
    except ValueError:
        return Outcome.failed("payload_rejected", f"the payload for {purpose} decrypted but is not valid JSON")
    if not isinstance(payload, dict):
        return Outcome.failed("payload_rejected", f"the payload for {purpose} is not a JSON object")
    return payload


def _checked_result(task: LeasedTask, result: object) -> Outcome:
    if not isinstance(result, dict):
        log.error("task handler returned a non-dict result", extra={"task_type": task.type.value})
        return Outcome.failed("internal_error", "the trust agent produced a malformed result; see its log")
    try:
        size = len(json.dumps(result, separators=(",", ":")))
    except (TypeError, ValueError):
        log.exception("task handler returned a result that is not JSON", extra={"task_type": task.type.value})
        return Outcome.failed("internal_error", "the trust agent produced a malformed result; see its log")
    if size > MAX_RESULT_BYTES:
        return Outcome.failed("result_too_large", f"the result is {size} bytes; the limit is {MAX_RESULT_BYTES}")
    return Outcome("completed", result=result)


registry = HandlerRegistry()
"""The agent's built-in handlers; the agent runs a copy of this registry unless given another."""


@registry.handler(TaskType.PING, concurrency=8)
async def ping(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Echo the message back: proves enqueue → lease → decrypt → handle → result end to end."""
    request = PingPayload.model_validate(payload)
    return PingResult(echo=request.message, received_at=datetime.now(UTC), agent_version=ctx.agent_version).model_dump(
        mode="json"
    )
