"""Metrics the researcher's code logs during a step: they travel in the step's reply to the FL server.

Inside a job, FLIP's ClientApp merges every logged metric into the metrics ``train`` / ``evaluate``
returned, under its label (the returned dict wins a clash; a label logged twice keeps its last value).
In local-dev mode the metrics are kept in memory (:func:`logged_metrics`) and logged at INFO on the
``flip.metrics`` logger.
"""

from __future__ import annotations

import logging
import math
import numbers
import re

from flip import context
from flip.context import JobStep, LoggedMetric
from flip.errors import NotInJob

logger = logging.getLogger(__name__)

LABEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def log_metric(label: str, value: float, round: int | None = None) -> None:
    """Record ``value`` under ``label`` for the current step.

    ``label``: 1 to 64 characters of ``A-Z a-z 0-9 _ . -``.  ``value``: a finite real number (a tensor's
    ``.item()``, not the tensor).  ``round``, when given, must be the current round inside a job (in
    local-dev mode it is recorded as given; it defaults to 0 there).  Raises ``ValueError`` for a bad
    label, value or round and :class:`flip.NotInJob` outside a job and local-dev mode.
    """
    if not isinstance(label, str) or not LABEL.fullmatch(label):
        raise ValueError(f"metric label {label!r} must be 1 to 64 characters of letters, digits, '_', '.' and '-'")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"metric {label!r} must be a real number, not {type(value).__name__} (use .item())")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"metric {label!r} must be finite, got {number}")
    if round is not None and (isinstance(round, bool) or not isinstance(round, int)):
        raise ValueError(f"round must be an integer, not {type(round).__name__}")
    mode = context.active()
    if isinstance(mode, JobStep):
        if round is not None and round != mode.context.round:
            raise ValueError(f"metric {label!r} is for round {round}, but this step is round {mode.context.round}")
        mode.metrics.append(LoggedMetric(label, number, mode.context.round))
        logger.debug("metric %s = %s (round %d)", label, number, mode.context.round)
        return
    metric = LoggedMetric(label, number, 0 if round is None else round)
    context.record_local_metric(metric)
    logger.info("metric %s = %s (round %d)", metric.label, metric.value, metric.round)


def logged_metrics() -> list[LoggedMetric]:
    """The metrics logged so far: this step's inside a job, else those of local-dev mode (oldest first)."""
    try:
        mode = context.active()
    except NotInJob:
        return []
    if isinstance(mode, JobStep):
        return list(mode.metrics)
    return context.local_metrics()
