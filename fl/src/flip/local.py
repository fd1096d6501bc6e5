"""Local-dev mode's data: the cohort from a CSV file, images from ``<images>/<accession>/<kind>/``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flip.context import ENV_DEV_IMAGES, LocalDev
from flip.errors import TrainerDataError

if TYPE_CHECKING:
    import pandas as pd


def read_dataframe(mode: LocalDev, columns: list[str] | None) -> pd.DataFrame:
    """The CSV's rows, with only ``columns`` (in that order) when given."""
    import pandas as pd

    try:
        frame = pd.read_csv(mode.dataframe)
    except (OSError, ValueError) as exc:
        raise TrainerDataError(f"cannot read the local-dev dataframe {mode.dataframe}: {exc}") from exc
    if columns is None:
        return frame
    unknown = [name for name in columns if name not in frame.columns]
    if unknown:
        raise TrainerDataError(
            f"unknown column(s) {', '.join(map(repr, unknown))} in {mode.dataframe.name}; "
            f"it has {', '.join(map(repr, frame.columns))}"
        )
    return frame[columns]


def study_files(mode: LocalDev, accession: str, kind: str) -> list[Path]:
    """Every file under ``<images>/<accession>/<kind>/``, sorted by their path within it."""
    if mode.images is None:
        raise TrainerDataError(
            f"local-dev mode has no images folder: pass images= to flip.local_dev or set {ENV_DEV_IMAGES}"
        )
    if not accession or accession in {".", ".."} or "/" in accession or "\\" in accession:
        raise TrainerDataError(f"accession {accession!r} cannot name a folder")
    folder = mode.images / accession / kind
    if not folder.is_dir():
        raise TrainerDataError(f"study {accession!r} has no {kind} folder in local-dev mode (looked for {folder})")
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
