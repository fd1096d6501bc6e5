"""Where the researcher's code is running: inside a FLIP job step at a trust, in local-dev mode, or neither.

Inside a job, FLIP's ClientApp opens a :func:`job_step` around the researcher's ``train`` / ``evaluate``
(project, trust and round from the job; service URLs, trainer key and cache folder from the
SuperNode's environment).  Outside a job, :func:`local_dev` (or ``FLIP_DEV_DATAFRAME`` /
``FLIP_DEV_IMAGES``) points the same calls at local files, so code developed offline runs unchanged
at the trusts.  A job step always wins over local-dev mode.

The state is per process, not per thread or task: a ClientApp process runs one step, and the
researcher's data-loading threads must see it too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from flip.errors import NotInJob, TrainerDataError

ENV_DATA_ACCESS_URL = "FLIP_DATA_ACCESS_URL"
ENV_IMAGING_URL = "FLIP_IMAGING_URL"
ENV_TRAINER_KEY = "FLIP_TRAINER_KEY"
ENV_TRAINER_CACHE = "FLIP_TRAINER_CACHE"
ENV_DEV_DATAFRAME = "FLIP_DEV_DATAFRAME"
ENV_DEV_IMAGES = "FLIP_DEV_IMAGES"

NOT_IN_JOB = (
    "no FLIP job is running and local-dev mode is off: call flip.local_dev('cohort.csv', images='images/') "
    f"or set {ENV_DEV_DATAFRAME} (and {ENV_DEV_IMAGES}) to develop against local files"
)


@dataclass(frozen=True)
class TrainerContext:
    """The job step the researcher's code runs in (``round`` is 0 in local-dev mode)."""

    project_id: str
    trust: str
    round: int
    data_access_url: str | None
    imaging_url: str | None


class LoggedMetric(NamedTuple):
    """One :func:`flip.log_metric` call: its label, value and round."""

    label: str
    value: float
    round: int


@dataclass
class JobStep:
    """A running job step: its context, what the SDK needs to reach the trust, and the metrics logged."""

    context: TrainerContext
    trainer_key: str | None
    cache_dir: Path | None
    metrics: list[LoggedMetric] = field(default_factory=list)


@dataclass(frozen=True)
class LocalDev:
    """Local-dev mode: the cohort as a CSV file and images as ``<images>/<accession>/<kind>/...``."""

    dataframe: Path
    images: Path | None
    context: TrainerContext


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job: JobStep | None = None
        self.local: LocalDev | None = None
        self.local_metrics: list[LoggedMetric] = []


_state = _State()


def _blank_is_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


@contextmanager
def job_step(project_id: str, trust: str, round: int, environ: Mapping[str, str] | None = None) -> Iterator[JobStep]:
    """Make a job step current for the block (FLIP's ClientApp calls this; researchers do not).

    The step is cleared when the block ends, whether it returns or raises.  ``environ`` defaults to
    the process environment, where the trust sets the service URLs, trainer key and cache folder.
    """
    env = os.environ if environ is None else environ
    cache = _blank_is_none(env.get(ENV_TRAINER_CACHE))
    step = JobStep(
        context=TrainerContext(
            project_id=project_id,
            trust=trust,
            round=round,
            data_access_url=_blank_is_none(env.get(ENV_DATA_ACCESS_URL)),
            imaging_url=_blank_is_none(env.get(ENV_IMAGING_URL)),
        ),
        trainer_key=_blank_is_none(env.get(ENV_TRAINER_KEY)),
        cache_dir=Path(cache).expanduser() if cache else None,
    )
    with _state.lock:
        if _state.job is not None:
            raise RuntimeError("a job step is already running in this process")
        _state.job = step
    try:
        yield step
    finally:
        with _state.lock:
            _state.job = None


def local_dev(
    dataframe: str | Path, images: str | Path | None = None, trust: str = "LOCAL", project_id: str = "local"
) -> TrainerContext:
    """Develop offline: :func:`flip.get_dataframe` reads ``dataframe`` (a CSV file) and
    :func:`flip.get_images` reads ``<images>/<accession>/<kind>/``; metrics are kept in memory.

    Inside a FLIP job this does nothing and returns the job's context (the files are not even looked
    for), so the call may stay in uploaded code.  Calling it again replaces the earlier settings and
    forgets the metrics logged so far.
    """
    with _state.lock:
        if _state.job is not None:
            return _state.job.context
    path = Path(dataframe).expanduser()
    if not path.is_file():
        raise TrainerDataError(f"local-dev dataframe {path} is not a file (a CSV with a header row is expected)")
    folder = Path(images).expanduser() if images is not None else None
    if folder is not None and not folder.is_dir():
        raise TrainerDataError(f"local-dev images folder {folder} is not a folder")
    mode = LocalDev(path, folder, TrainerContext(project_id, trust, 0, None, None))
    with _state.lock:
        _state.local = mode
        _state.local_metrics = []
    return mode.context


def reset() -> None:
    """Leave local-dev mode and forget its metrics (a running job step is not touched)."""
    with _state.lock:
        _state.local = None
        _state.local_metrics = []


def active() -> JobStep | LocalDev:
    """The running job step, else local-dev mode (set by :func:`local_dev` or the environment)."""
    with _state.lock:
        if _state.job is not None:
            return _state.job
        if _state.local is not None:
            return _state.local
    dataframe = _blank_is_none(os.environ.get(ENV_DEV_DATAFRAME))
    if dataframe is None:
        raise NotInJob(NOT_IN_JOB)
    images = _blank_is_none(os.environ.get(ENV_DEV_IMAGES))
    return LocalDev(
        Path(dataframe).expanduser(),
        Path(images).expanduser() if images else None,
        TrainerContext("local", "LOCAL", 0, None, None),
    )


def current() -> TrainerContext:
    """The context the researcher's code runs in; :class:`NotInJob` outside a job and local-dev mode."""
    return active().context


def record_local_metric(metric: LoggedMetric) -> None:
    with _state.lock:
        _state.local_metrics.append(metric)


def local_metrics() -> list[LoggedMetric]:
    with _state.lock:
        return list(_state.local_metrics)
