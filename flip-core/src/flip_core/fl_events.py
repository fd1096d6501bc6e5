"""The typed events an FL server reports to the hub about a run (shared by the FL side and the hub).

They carry metrics and short reasons only, never model weights, data or stack traces.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# The header the FL net puts its net key in, on its reports to the hub (and the hub on its calls to the net).
INTERNAL_KEY_HEADER = "X-FLIP-Internal-Key"
MAX_REASON_LENGTH = 300

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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def sanitise(reason: str) -> str:
    """A one-line reason of bounded length (no control characters, no multi-line tracebacks)."""
    first = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
    text = _CONTROL.sub(" ", first).strip()
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"
