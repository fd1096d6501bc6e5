"""The agent's HTTP client for the hub's machine routes (``/api/trust/...``).

Every request carries the trust's API key and the protocol version.  Failures fall in four kinds:

* transient (connection errors, timeouts, 5xx, 408, 429): retried with exponential backoff and full
  jitter, honouring ``Retry-After``; :class:`HubUnavailable` when the allowed attempts run out;
* fatal (401/403, or a 400 about the protocol version): :class:`~flip_trust_api.errors.FatalHubError`,
  never retried — the agent must stop;
* a lost lease (409 ``stale_lease``): :class:`StaleLease`;
* any other refusal of one request (404, 422, ...): :class:`HubRejected`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from flip_core.contract import (
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
    TRUST_KEY_HEADER,
    TrustIdentity,
    TrustKit,
)
from flip_core.logging import request_id_var
from flip_core.tasks import (
    MAX_LEASE_WAIT_S,
    Heartbeat,
    HeartbeatAck,
    LeaseExtended,
    LeaseExtension,
    LeaseRequest,
    LeaseResponse,
    TaskResult,
    TaskResultAck,
)
from flip_trust_api import __version__
from flip_trust_api.errors import FatalHubError
from flip_trust_api.fl_protocol import FlNetList, NodeKeyAck, NodeKeyIn

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

RETRY_AFTER_CAP_S = 300.0
_RETRYABLE_STATUS = frozenset({408, 425, 429})


class Backoff:
    """Exponential backoff with full jitter: retry ``n`` (0-based) waits ``uniform(0, min(cap, base·2ⁿ))``.

    Full jitter spreads a crowd of agents that all lost the hub at once, so they do not come back in
    lock-step when it returns.
    """

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()

    def ceiling(self, retry: int) -> float:
        """The most retry ``retry`` may wait."""
        # Cap the exponent first: 2**retry overflows a float long before anyone retries that often.
        return min(self.cap_s, self.base_s * 2.0 ** min(retry, 64))

    def delay(self, retry: int) -> float:
        """A random wait in ``[0, ceiling(retry)]``."""
        return self._rng.uniform(0.0, self.ceiling(retry))


class HubUnavailable(Exception):
    """The hub could not be reached (or kept failing) within the allowed attempts."""


class HubRejected(Exception):
    """The hub refused this one request (not the agent as a whole); retrying the same request will not help."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class StaleLease(HubRejected):
    """The lease token is no longer the task's current one (the task was re-leased, or finished)."""


class _Transient(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return body["code"], str(body.get("detail", ""))[:500]
    return f"http_{response.status_code}", response.reason_phrase or ""


class HubClient:
    """Typed calls to the hub's trust machine routes with retry, backoff and error classification."""

    def __init__(
        self,
        kit: TrustKit,
        *,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.kit = kit
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=kit.hub_url.rstrip("/") + "/api/trust",
            headers={
                TRUST_KEY_HEADER: kit.api_key,
                PROTOCOL_HEADER: PROTOCOL_VERSION,
                "User-Agent": f"flip-trust-agent/{__version__}",
            },
            timeout=timeout_s,
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def whoami(self, *, attempts: int | None = None) -> TrustIdentity:
        """The trust the hub resolves this kit's key to."""
        return await self._call("GET", "/whoami", TrustIdentity, attempts=attempts)

    async def heartbeat(self, beat: Heartbeat, *, attempts: int | None = 1) -> HeartbeatAck:
        """Report liveness and the health snapshot (one attempt by default: the next beat is the retry)."""
        return await self._call("POST", "/heartbeat", HeartbeatAck, body=beat, attempts=attempts)

    async def lease(self, request: LeaseRequest, *, wait_s: float, attempts: int | None = None) -> LeaseResponse:
        """Long-poll for tasks: the hub answers at once if work is pending, else within ``wait_s`` seconds."""
        wait_s = max(0.0, min(wait_s, MAX_LEASE_WAIT_S))
        return await self._call(
            "POST",
            "/tasks/lease",
            LeaseResponse,
            body=request,
            params={"wait": f"{wait_s:g}"},
            timeout_s=self.timeout_s + wait_s,
            attempts=attempts,
        )

    async def extend(self, task_id: uuid.UUID, extension: LeaseExtension, *, attempts: int | None = 3) -> LeaseExtended:
        """Push a held lease's expiry forward; :class:`StaleLease` if it is no longer ours."""
        return await self._call("POST", f"/tasks/{task_id}/extend", LeaseExtended, body=extension, attempts=attempts)

    async def post_result(
        self, task_id: uuid.UUID, result: TaskResult, *, attempts: int | None = None
    ) -> TaskResultAck:
        """Deliver a task's outcome (idempotent for the same token); :class:`StaleLease` if superseded."""
        return await self._call("POST", f"/tasks/{task_id}/result", TaskResultAck, body=result, attempts=attempts)

    async def put_fl_node_key(self, public_key: str, *, attempts: int | None = 3) -> NodeKeyAck:
        """Send the public key of this trust's SuperNode (the hub registers it on every Flower net)."""
        body = NodeKeyIn(public_key=public_key)
        return await self._call("PUT", "/fl/node-key", NodeKeyAck, body=body, attempts=attempts)

    async def fl_nets(self, *, attempts: int | None = 1) -> FlNetList:
        """The Flower nets this trust's SuperNodes should dial, with their CA certificates."""
        return await self._call("GET", "/fl/nets", FlNetList, attempts=attempts)

    async def _call(
        self,
        method: str,
        path: str,
        model: type[ModelT],
        *,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        attempts: int | None,
    ) -> ModelT:
        """One logical call: retried on transient failures until ``attempts`` (None: until it succeeds)."""
        retry = 0
        while True:
            try:
                return await self._once(method, path, model, body=body, params=params, timeout_s=timeout_s)
            except _Transient as exc:
                retry += 1
                if attempts is not None and retry >= attempts:
                    raise HubUnavailable(f"{method} {path}: {exc.reason}") from exc
                delay = exc.retry_after_s if exc.retry_after_s is not None else self.backoff.delay(retry - 1)
                log.warning(
                    "hub call failed; retrying",
                    extra={
                        "call": f"{method} {path}",
                        "reason": exc.reason,
                        "retry": retry,
                        "delay_s": round(delay, 3),
                    },
                )
                await self._sleep(delay)

    async def _once(
        self,
        method: str,
        path: str,
        model: type[ModelT],
        *,
        body: BaseModel | None,
        params: dict[str, Any] | None,
        timeout_s: float | None,
    ) -> ModelT:
        headers = {}
        request_id = request_id_var.get()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        try:
            response = await self._http.request(
                method,
                path,
                content=body.model_dump_json().encode() if body is not None else None,
                headers={**headers, "Content-Type": "application/json"} if body is not None else headers,
                params=params,
                timeout=timeout_s if timeout_s is not None else self.timeout_s,
            )
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        status = response.status_code
        if 200 <= status < 300:
            try:
                return model.model_validate_json(response.content)
            except ValidationError as exc:
                # A proxy's page or a hub of another version: log loudly, keep trying (it may pass).
                raise _Transient(f"unexpected response body from the hub ({exc.error_count()} errors)") from exc
        code, detail = _error_of(response)
        if status in _RETRYABLE_STATUS or status >= 500:
            raise _Transient(f"HTTP {status} {code}", parse_retry_after(response.headers.get("Retry-After")))
        if status in (401, 403) or (status == 400 and code.startswith("protocol")):
            raise FatalHubError(status, code, detail)
        if status == 409 and code == "stale_lease":
            raise StaleLease(status, code, detail)
        raise HubRejected(status, code, detail)
