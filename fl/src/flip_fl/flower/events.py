"""Typed events the FL server reports about a run, and the :class:`Reporter` that delivers them.

The events are what the hub shows and stores: the run started, a round started or completed (with
each trust's metrics and the aggregate), a trust dropped out, the run completed or failed. They carry
metrics and short reasons only, never model weights, data or stack traces.

Delivery: when ``FLIP_FL_REPORT_URL`` is set, each event is POSTed there as JSON with the header
``X-FLIP-Internal-Key: $FLIP_FL_REPORT_KEY``; otherwise it is appended as one JSON line to the run's
``report_file``. Reporting never stops a run: a hub that cannot be reached is logged and retried a
few times, then the event is dropped.

Results: when ``FLIP_FL_RESULTS_URL`` is set (``<hub>/api/fl/jobs``), :meth:`Reporter.upload` PUTs each
result file to ``<url>/<job_id>/results/<name>`` with the same key, before ``run_completed`` is sent.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

# The event models live in flip-core, which the hub shares; they are re-exported here for the FL side.
from flip_core.fl_events import (
    INTERNAL_KEY_HEADER,
    MAX_REASON_LENGTH,
    RUN_EVENT,
    Metrics,
    RoundCompleted,
    RoundStarted,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    TrustDropped,
    parse_event,
    sanitise,
)

__all__ = [
    "INTERNAL_KEY_HEADER",
    "MAX_REASON_LENGTH",
    "REPORT_KEY_ENV",
    "REPORT_URL_ENV",
    "RESULTS_URL_ENV",
    "RUN_EVENT",
    "Metrics",
    "Reporter",
    "RoundCompleted",
    "RoundStarted",
    "RunCompleted",
    "RunEvent",
    "RunFailed",
    "RunStarted",
    "TrustDropped",
    "parse_event",
    "read_report",
    "sanitise",
]

REPORT_URL_ENV = "FLIP_FL_REPORT_URL"
REPORT_KEY_ENV = "FLIP_FL_REPORT_KEY"
RESULTS_URL_ENV = "FLIP_FL_RESULTS_URL"

logger = logging.getLogger(__name__)


def read_report(path: Path) -> list[RunEvent]:
    """Every event in a JSON-lines report file, in order."""
    if not path.exists():
        return []
    return [parse_event(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Reporter:
    """Delivers events to the hub (HTTP) or to a JSON-lines file; see the module docstring."""

    def __init__(
        self,
        *,
        url: str | None = None,
        key: str | None = None,
        report_file: Path | None = None,
        results_url: str | None = None,
        attempts: int = 3,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._results_url = results_url
        self._key = key or ""
        self._file = report_file
        self._attempts = max(1, attempts)
        self._timeout_s = timeout_s

    @classmethod
    def from_env(cls, report_file: str) -> Reporter:
        """The hub's internal route when the environment names one, else the run's report file."""
        url = os.environ.get(REPORT_URL_ENV, "").strip()
        if url:
            results = os.environ.get(RESULTS_URL_ENV, "").strip() or None
            return cls(url=url, key=os.environ.get(REPORT_KEY_ENV, ""), results_url=results)
        return cls(report_file=Path(report_file) if report_file else None)

    def emit(self, event: RunEvent) -> None:
        """Deliver one event; failures are logged, never raised."""
        body = event.model_dump_json()
        logger.info("flip event %s", body)
        if self._url:
            self._post(body.encode("utf-8"))
        elif self._file is not None:
            try:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                with self._file.open("a", encoding="utf-8") as out:
                    out.write(body + "\n")
            except OSError as exc:
                logger.warning("could not write the report file %s: %s", self._file, exc)

    @property
    def uploads(self) -> bool:
        """Whether result files go to the hub (else they stay in the run's output directory)."""
        return self._results_url is not None

    def upload(self, job_id: str, path: Path) -> bool:
        """PUT one result file to the hub; True when the hub stored it (or there is no hub to send to)."""
        if self._results_url is None:
            return True
        url = f"{self._results_url.rstrip('/')}/{job_id}/results/{path.name}"
        return self._send(url, path.read_bytes(), "PUT", "application/octet-stream", f"result {path.name}")

    def _post(self, body: bytes) -> None:
        assert self._url is not None
        if not self._send(self._url, body, "POST", "application/json", "event"):
            logger.warning("event dropped")

    def _send(self, url: str, body: bytes, method: str, content_type: str, what: str) -> bool:
        if not url.startswith(("http://", "https://")):
            logger.warning("the hub URL must be http(s); %s dropped", what)
            return False
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            url,
            data=body,
            method=method,
            headers={"Content-Type": content_type, INTERNAL_KEY_HEADER: self._key},
        )
        for attempt in range(self._attempts):
            try:
                with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                    if 200 <= response.status < 300:
                        return True
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500:
                    logger.warning("the hub refused the %s (HTTP %s); not retried", what, exc.code)
                    return False
                logger.warning("the hub answered HTTP %s to the %s", exc.code, what)
            except (urllib.error.URLError, OSError) as exc:
                logger.warning("could not reach the hub to send the %s: %s", what, exc)
            if attempt + 1 < self._attempts:
                time.sleep(0.5 * 2**attempt)
        logger.warning("the %s was not delivered after %d attempts", what, self._attempts)
        return False
