"""Typed events the FL server reports about a run, and the :class:`Reporter` that delivers them.

The events are what the hub shows and stores: the run started, a round started or completed (with
each trust's metrics and the aggregate), a trust dropped out, the run completed or failed. They carry
metrics and short reasons only, never model weights, data or stack traces.

Delivery: when ``FLIP_FL_REPORT_URL`` is set, each event is POSTed there as JSON with the header
``X-FLIP-Internal-Key: $FLIP_FL_REPORT_KEY``; otherwise it is appended as one JSON line to the run's
``report_file``. Reporting never stops a run: a hub that cannot be reached is logged and retried a
few times, then the event is dropped.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

REPORT_URL_ENV = "FLIP_FL_REPORT_URL"
REPORT_KEY_ENV = "FLIP_FL_REPORT_KEY"
INTERNAL_KEY_HEADER = "X-FLIP-Internal-Key"
MAX_REASON_LENGTH = 300

logger = logging.getLogger(__name__)

Metrics = dict[str, float]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    run_id: int
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


class RunStarted(_Event):
    """The ServerApp found the selected trusts it could reach and is about to start round 1."""

    event: Literal["run_started"] = "run_started"
    job_type: str
    strategy: str
    rounds: int
    min_clients: int
    selected: list[str]
    participants: list[str]
    seed: int


class RoundStarted(_Event):
    """A round's messages went out to these trusts (``round`` 0 is nothing; evaluation is 1)."""

    event: Literal["round_started"] = "round_started"
    round: int
    phase: Literal["train", "evaluate"]
    trusts: list[str]


class RoundCompleted(_Event):
    """A round ended with enough replies: each trust's metrics and their example-weighted mean."""

    event: Literal["round_completed"] = "round_completed"
    round: int
    phase: Literal["train", "evaluate"]
    metrics: dict[str, Metrics]
    aggregated: Metrics


class TrustDropped(_Event):
    """A selected trust did not take part in a round: offline, timed out, failed or replied badly."""

    event: Literal["trust_dropped"] = "trust_dropped"
    round: int
    trust: str
    reason: str


class RunCompleted(_Event):
    """The run finished; the final model and its lineage are in the output directory."""

    event: Literal["run_completed"] = "run_completed"
    rounds_completed: int
    model_file: str
    lineage_file: str
    model_sha256: str


class RunFailed(_Event):
    """The run stopped early; ``reason`` is short and safe to show to the researcher."""

    event: Literal["run_failed"] = "run_failed"
    reason: str
    round: int | None = None


RunEvent = Annotated[
    RunStarted | RoundStarted | RoundCompleted | TrustDropped | RunCompleted | RunFailed,
    Field(discriminator="event"),
]
RUN_EVENT: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


def parse_event(line: str | bytes) -> RunEvent:
    """One event from its JSON form (a line of a report file, or a POST body)."""
    return RUN_EVENT.validate_json(line)


def read_report(path: Path) -> list[RunEvent]:
    """Every event in a JSON-lines report file, in order."""
    if not path.exists():
        return []
    return [parse_event(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def sanitise(reason: str) -> str:
    """A one-line reason of bounded length (no control characters, no multi-line tracebacks)."""
    first = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
    text = _CONTROL.sub(" ", first).strip()
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


class Reporter:
    """Delivers events to the hub (HTTP) or to a JSON-lines file; see the module docstring."""

    def __init__(
        self,
        *,
        url: str | None = None,
        key: str | None = None,
        report_file: Path | None = None,
        attempts: int = 3,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._key = key or ""
        self._file = report_file
        self._attempts = max(1, attempts)
        self._timeout_s = timeout_s

    @classmethod
    def from_env(cls, report_file: str) -> Reporter:
        """The hub's internal route when the environment names one, else the run's report file."""
        url = os.environ.get(REPORT_URL_ENV, "").strip()
        if url:
            return cls(url=url, key=os.environ.get(REPORT_KEY_ENV, ""))
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

    def _post(self, body: bytes) -> None:
        assert self._url is not None
        if not self._url.startswith(("http://", "https://")):
            logger.warning("%s must be an http(s) URL; event dropped", REPORT_URL_ENV)
            return
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", INTERNAL_KEY_HEADER: self._key},
        )
        for attempt in range(self._attempts):
            try:
                with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                    if 200 <= response.status < 300:
                        return
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500:
                    logger.warning("the hub refused an event (HTTP %s); not retried", exc.code)
                    return
                logger.warning("the hub answered HTTP %s to an event", exc.code)
            except (urllib.error.URLError, OSError) as exc:
                logger.warning("could not reach the hub to report an event: %s", exc)
            if attempt + 1 < self._attempts:
                time.sleep(0.5 * 2**attempt)
        logger.warning("event dropped after %d attempts", self._attempts)
