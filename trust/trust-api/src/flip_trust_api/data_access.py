"""The agent's client for this trust's data-access-api (inside the trust, with the internal key).

Failures come back as :class:`~flip_trust_api.handlers.TaskFailure` in the cohort error categories the
data-access-api chose; the agent adds only "unreachable" (retryable) and never invents a detail.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from flip_core.cohort import CohortErrorCode
from flip_core.contract import INTERNAL_KEY_HEADER, ErrorBody
from flip_trust_api.handlers import TaskFailure

_KNOWN_CODES = {code.value for code in CohortErrorCode}


class DataAccessClient:
    """Calls ``/cohort/*`` routes of the trust's data-access-api."""

    def __init__(
        self, base_url: str, internal_key: str, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={INTERNAL_KEY_HEADER: internal_key},
            timeout=timeout_s,
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(self, path: str, body: BaseModel) -> dict[str, Any]:
        """POST ``body`` and return the JSON answer, or raise a :class:`TaskFailure` in a safe category."""
        try:
            response = await self._http.post(
                path, content=body.model_dump_json(), headers={"Content-Type": "application/json"}
            )
        except httpx.TimeoutException as exc:
            raise TaskFailure(
                CohortErrorCode.QUERY_TIMEOUT.value, "the data-access-api did not answer in time", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise TaskFailure(
                CohortErrorCode.DATA_UNAVAILABLE.value, "this trust's data-access-api is unreachable", retryable=True
            ) from exc
        if response.is_success:
            answer = response.json()
            if not isinstance(answer, dict):
                raise TaskFailure(CohortErrorCode.INTERNAL_ERROR.value, "the data-access-api answered malformed JSON")
            return answer
        try:
            error = ErrorBody.model_validate_json(response.content)
        except ValidationError:
            error = ErrorBody(detail="", code="")
        if response.status_code == 401:
            raise TaskFailure(
                CohortErrorCode.INTERNAL_ERROR.value,
                "the data-access-api refused the agent's internal key (check both use the same kit)",
            )
        code = error.code if error.code in _KNOWN_CODES else CohortErrorCode.INTERNAL_ERROR.value
        raise TaskFailure(code, error.detail, retryable=response.status_code >= 500)
