"""The agent's clients for this trust's own services (inside the trust, with the internal key).

:class:`TrustServiceClient` posts a request and returns the JSON answer; a failure comes back as a
:class:`~flip_trust_api.handlers.TaskFailure` in the error categories the service itself chose (an
unknown category becomes ``internal_error``).  The agent adds only "unreachable" and "timed out"
(retryable) and never invents a detail.  :func:`data_access_client` and :func:`imaging_client` give
the two services' clients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from flip_core.cohort import CohortErrorCode
from flip_core.contract import INTERNAL_KEY_HEADER, ErrorBody
from flip_core.imaging import ImagingErrorCode
from flip_trust_api.handlers import TaskFailure

INTERNAL_ERROR = "internal_error"


class TrustServiceClient:
    """POSTs to one of the trust's internal services."""

    def __init__(
        self,
        name: str,
        base_url: str,
        internal_key: str,
        *,
        timeout_s: float,
        codes: Iterable[str],
        unreachable_code: str,
        timeout_code: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._codes = frozenset(codes)
        self._unreachable_code = unreachable_code
        self._timeout_code = timeout_code
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
            raise TaskFailure(self._timeout_code, f"the {self.name} did not answer in time", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise TaskFailure(
                self._unreachable_code, f"this trust's {self.name} is unreachable", retryable=True
            ) from exc
        if response.is_success:
            answer = response.json()
            if not isinstance(answer, dict):
                raise TaskFailure(INTERNAL_ERROR, f"the {self.name} answered malformed JSON")
            return answer
        try:
            error = ErrorBody.model_validate_json(response.content)
        except ValidationError:
            error = ErrorBody(detail="", code="")
        if response.status_code == 401:
            raise TaskFailure(
                INTERNAL_ERROR, f"the {self.name} refused the agent's internal key (check both use the same kit)"
            )
        code = error.code if error.code in self._codes else INTERNAL_ERROR
        raise TaskFailure(code, error.detail, retryable=response.status_code >= 500)


def data_access_client(
    base_url: str, internal_key: str, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
) -> TrustServiceClient:
    """The client of the data-access-api (cohort statistics, snapshots)."""
    return TrustServiceClient(
        "data-access-api",
        base_url,
        internal_key,
        timeout_s=timeout_s,
        codes=(code.value for code in CohortErrorCode),
        unreachable_code=CohortErrorCode.DATA_UNAVAILABLE.value,
        timeout_code=CohortErrorCode.QUERY_TIMEOUT.value,
        transport=transport,
    )


def imaging_client(
    base_url: str, internal_key: str, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
) -> TrustServiceClient:
    """The client of the imaging-api (imports, their status, re-import, deletion)."""
    return TrustServiceClient(
        "imaging-api",
        base_url,
        internal_key,
        timeout_s=timeout_s,
        codes=(code.value for code in ImagingErrorCode),
        unreachable_code=ImagingErrorCode.IMAGING_UNAVAILABLE.value,
        timeout_code=ImagingErrorCode.IMAGING_UNAVAILABLE.value,
        transport=transport,
    )
