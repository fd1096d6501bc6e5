"""The researcher's data: the project's cohort rows and its imaging studies at this trust.

Inside a job they come from the trust's own services (:mod:`flip.trust_services`); in local-dev mode
from local files (:mod:`flip.local`).  The calls and their results are the same in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from flip import context, local, trust_services
from flip.context import JobStep

if TYPE_CHECKING:
    import pandas as pd

ImageKind = Literal["nifti", "mask", "dicom"]
IMAGE_KINDS: tuple[str, ...] = get_args(ImageKind)


def get_dataframe(columns: list[str] | None = None) -> pd.DataFrame:
    """The frozen cohort rows of the current job's project at this trust, one column per cohort column.

    ``columns`` selects and orders columns (all when omitted).  Raises :class:`flip.TrainerDataError`
    when the data cannot be read (the message names the service's answer, e.g. an unknown column) and
    :class:`flip.NotInJob` outside a job and local-dev mode.
    """
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise ValueError("columns must be a list of column names")
    mode = context.active()
    if isinstance(mode, JobStep):
        return trust_services.fetch_dataframe(mode, columns)
    return local.read_dataframe(mode, columns)


def get_images(accession_id: str, kind: ImageKind = "nifti") -> list[Path]:
    """Local paths of one study's files of ``kind`` (``nifti``, ``mask`` or ``dicom``), in listing order.

    Inside a job they are downloaded into the cache (``FLIP_TRAINER_CACHE``, else a temporary folder)
    and checked against their sha256; files already cached are not downloaded again.  Raises
    :class:`flip.TrainerDataError` when the study is not available (e.g. not imported at this trust,
    or not in this project's cohort).
    """
    if kind not in IMAGE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(IMAGE_KINDS)}, got {kind!r}")
    if not isinstance(accession_id, str) or not accession_id.strip():
        raise ValueError("accession_id must be a non-empty string")
    mode = context.active()
    if isinstance(mode, JobStep):
        return trust_services.fetch_images(mode, accession_id, kind)
    return local.study_files(mode, accession_id, kind)
