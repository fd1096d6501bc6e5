"""FLIP's trainer SDK: what the researcher's training code calls to read its data and log metrics.

Inside a FLIP job at a trust, :func:`get_dataframe` and :func:`get_images` read the project's frozen
cohort and imaging studies from that trust's own services; outside one, :func:`local_dev` points the
same calls at local files.  :func:`log_metric` adds metrics to the step's reply.
"""

from __future__ import annotations

from flip.context import LoggedMetric, TrainerContext, current, local_dev
from flip.data import ImageKind, get_dataframe, get_images
from flip.errors import NotInJob, TrainerDataError
from flip.metrics import log_metric, logged_metrics

__all__ = [
    "ImageKind",
    "LoggedMetric",
    "NotInJob",
    "TrainerContext",
    "TrainerDataError",
    "current",
    "get_dataframe",
    "get_images",
    "local_dev",
    "log_metric",
    "logged_metrics",
]
