"""The imaging-api's client for this trust's data-access-api: accession ids in, gated counts out.

The imaging-api never reads the OMOP data or a snapshot itself.  Which studies to import comes from the
approved project's frozen cohort (``/cohort/accession-ids``), and every number it reports about them is
made by the data-access-api's disclosure gate (``/cohort/study-counts``): one gate for the whole trust.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from pydantic import ValidationError

from flip_core.cohort import CohortErrorCode, GatedCount
from flip_core.contract import INTERNAL_KEY_HEADER, ErrorBody
from flip_core.imaging import ImagingErrorCode

_CODES = {
    CohortErrorCode.NOT_APPROVED.value: ImagingErrorCode.NOT_APPROVED,
    CohortErrorCode.UNKNOWN_COLUMN.value: ImagingErrorCode.NO_ACCESSION_COLUMN,
    CohortErrorCode.BELOW_THRESHOLD.value: ImagingErrorCode.BELOW_THRESHOLD,
    CohortErrorCode.DATA_UNAVAILABLE.value: ImagingErrorCode.DATA_UNAVAILABLE,
}


class CohortLinkError(Exception):
    """The data-access-api could not give what was asked, in an imaging error category."""

    def __init__(self, code: ImagingErrorCode, detail: str, *, retryable: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retryable = retryable


class CohortLink:
    """Calls the two ``/cohort/*`` routes the imaging-api needs, with the trust's internal key."""

    def __init__(
        self, base_url: str, internal_key: str, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={INTERNAL_KEY_HEADER: internal_key},
            timeout=timeout_s,
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def accession_ids(self, project_id: uuid.UUID) -> list[str]:
        """The accession ids of the project's frozen cohort (blank ones are already left out)."""
        answer = await self._post("/cohort/accession-ids", {"project_id": str(project_id)})
        ids = answer.get("accession_ids")
        if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
            raise CohortLinkError(ImagingErrorCode.INTERNAL_ERROR, "the data-access-api answered malformed ids")
        return ids

    async def study_counts(
        self, project_id: uuid.UUID, groups: dict[str, list[str]], min_k: int
    ) -> tuple[int, dict[str, GatedCount]]:
        """Gated counts of the persons behind each group of accession ids, and the threshold applied."""
        body = {"project_id": str(project_id), "groups": groups, "min_k": min_k}
        answer = await self._post("/cohort/study-counts", body)
        try:
            k = int(answer["k"])
            counts = {label: GatedCount.model_validate(count) for label, count in answer["counts"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
            raise CohortLinkError(ImagingErrorCode.INTERNAL_ERROR, "the data-access-api answered bad counts") from exc
        if set(counts) != set(groups) or k < min_k:
            raise CohortLinkError(ImagingErrorCode.INTERNAL_ERROR, "the data-access-api answered other counts")
        return k, counts

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/health")).is_success
        except httpx.HTTPError:
            return False

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise CohortLinkError(
                ImagingErrorCode.DATA_UNAVAILABLE, "this trust's data-access-api is unreachable", retryable=True
            ) from exc
        if response.is_success:
            answer = response.json()
            if not isinstance(answer, dict):
                raise CohortLinkError(ImagingErrorCode.INTERNAL_ERROR, "the data-access-api answered malformed JSON")
            return answer
        if response.status_code == 401:
            raise CohortLinkError(
                ImagingErrorCode.INTERNAL_ERROR,
                "the data-access-api refused the imaging-api's internal key (check both use the same kit)",
            )
        try:
            error = ErrorBody.model_validate_json(response.content)
        except ValidationError:
            error = ErrorBody(detail="the data-access-api failed", code="")
        code = _CODES.get(error.code, ImagingErrorCode.INTERNAL_ERROR)
        raise CohortLinkError(code, error.detail, retryable=response.status_code >= 500)
