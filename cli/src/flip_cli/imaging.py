"""``flip trust imaging``: the trust's imaging — the imaging-api, an embedded PACS, synthetic studies.

    flip trust imaging serve --kit FILE --pacs-port P --pacs-ae-title AE --data-access-url URL [--labels DIR]
    flip trust imaging pacs --storage DIR [--port P] [--ae-title AE]
    flip trust imaging generate --persons N [--seed S] [--profile north|south|east] --out DIR [--limit N]
    flip trust imaging seed --pacs-port P --pacs-ae-title AE --from DIR

``generate`` writes one small DICOM series (and its organ mask) per imaging study of the synthetic
OMOP dataset with the same ``--persons``, ``--seed`` and ``--profile``, so the accession ids the
cohort queries return are the ones the PACS holds.  Exit codes: 0 ok, 1 failure while writing (disk
full, permission denied), 2 usage, 3 configuration (``--out`` or one of its parents is not a folder).
``seed`` sends those files to a PACS (the embedded one or Orthanc) by C-STORE.  ``serve`` runs the
imaging-api (imports from the PACS into the research store, gated status, images for FL trainers);
``pacs`` runs the embedded PACS (pynetdicom's Q/R SCP on 127.0.0.1) for trusts without one to hand.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from flip_cli.errors import CliError, config_error
from flip_imaging.config import ImagingConfigError, ImagingSettings
from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.pacs import PacsClient, PacsError, StoreFailed
from flip_imaging.synthetic import write_studies
from flip_omop import PROFILE_NAMES, get_profile


@click.group()
def imaging() -> None:
    """The trust's imaging: the imaging-api, an embedded PACS, and synthetic DICOM studies."""


@imaging.command()
@click.option(
    "--kit",
    "kit_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The trust kit (its internal key guards every route) [default: FLIP_IMAGING_KIT_FILE].",
)
@click.option("--pacs-host", default=None, help="The PACS's DICOM host [default: FLIP_IMAGING_PACS_HOST or 127.0.0.1].")
@click.option(
    "--pacs-port", type=click.IntRange(1, 65535), default=None, help="The PACS's DICOM port [FLIP_IMAGING_PACS_PORT]."
)
@click.option("--pacs-ae-title", default=None, help="The PACS's AE title [FLIP_IMAGING_PACS_AE_TITLE].")
@click.option("--data-access-url", default=None, help="The trust's data-access-api [FLIP_IMAGING_DATA_ACCESS_URL].")
@click.option(
    "--labels",
    "labels_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Segmentation labels as <accession>/mask.nii.gz, attached to imported studies [FLIP_IMAGING_LABELS_DIR].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Research store, study ledger, de-identification secret [FLIP_IMAGING_STATE_DIR, else under FLIP_STATE_DIR].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port on 127.0.0.1 (0 picks a free one and prints the URL) [default: FLIP_IMAGING_PORT or 0].",
)
def serve(
    kit_file: Path | None,
    pacs_host: str | None,
    pacs_port: int | None,
    pacs_ae_title: str | None,
    data_access_url: str | None,
    labels_dir: Path | None,
    state_dir: Path | None,
    port: int | None,
) -> None:
    """Serve the imaging-api until SIGINT/SIGTERM.

    It imports approved projects' studies from the PACS (C-FIND, C-GET), de-identifies them, converts
    them to NIfTI when the project asks, and serves them to this trust's FL trainers.  Every count it
    reports passes the data-access-api's disclosure gate.  Exit codes: 0 stopped, 1 failure, 3 configuration.
    """
    from flip_imaging.serve import run  # uvicorn and FastAPI load only for this command

    overrides: dict[str, Any] = {}
    for name, value in (
        ("FLIP_IMAGING_KIT_FILE", kit_file),
        ("FLIP_IMAGING_PACS_HOST", pacs_host),
        ("FLIP_IMAGING_PACS_PORT", pacs_port),
        ("FLIP_IMAGING_PACS_AE_TITLE", pacs_ae_title),
        ("FLIP_IMAGING_DATA_ACCESS_URL", data_access_url),
        ("FLIP_IMAGING_LABELS_DIR", labels_dir),
        ("FLIP_IMAGING_STATE_DIR", state_dir),
        ("FLIP_IMAGING_PORT", port),
    ):
        if value is not None:
            overrides[name] = value
    try:
        settings = ImagingSettings(**overrides)
    except ValidationError as exc:
        raise config_error(f"invalid imaging-api configuration: {exc}") from exc
    try:
        run(settings)
    except ImagingConfigError as exc:
        raise config_error(str(exc)) from exc
    except OSError as exc:
        raise config_error(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise CliError(f"the imaging-api stopped unexpectedly: {type(exc).__name__}: {exc}") from exc


@imaging.command()
@click.option(
    "--storage",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the PACS's files and index (kept between runs).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="DICOM port on 127.0.0.1.")
@click.option("--ae-title", default="FLIP_PACS", show_default=True, help="The PACS's AE title.")
def pacs(storage: Path, port: int, ae_title: str) -> None:
    """Run the embedded PACS (C-ECHO, C-FIND, C-GET, C-STORE) on 127.0.0.1 until SIGINT/SIGTERM.

    It prints "pacs listening on: HOST PORT AE" once it accepts associations.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = EmbeddedPacs(storage, ae_title=ae_title, port=port)
        server.start()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        raise config_error(f"cannot start the PACS on port {port}: {exc.strerror or exc}") from exc
    try:
        click.echo(f"pacs listening on: {server.host} {server.port} {server.ae_title}")
        stop.wait()
    finally:
        server.stop()


@imaging.command()
@click.option("--persons", type=click.IntRange(1, 100_000_000), required=True, help="Persons in the OMOP dataset.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the OMOP dataset.")
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    default=PROFILE_NAMES[0],
    show_default=True,
    help="The trust profile of the OMOP dataset (it also picks the trust's scanners).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write <accession>/<series uid>/<n>.dcm and <accession>/mask.nii.gz under.",
)
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Write only the first N studies.")
def generate(persons: int, seed: int, profile: str, out_dir: Path, limit: int | None) -> None:
    """Write a synthetic DICOM series for every imaging study of an OMOP dataset.

    Use the --persons, --seed and --profile the OMOP data was generated with (`flip trust omop
    generate`): the studies then carry exactly its accession ids, UIDs, patients and lesions.  The
    same options always write byte-identical files; existing files of the same studies are replaced.
    """
    _check_folder(out_dir)
    started = time.perf_counter()
    try:
        studies = write_studies(get_profile(profile), persons, seed, out_dir, limit=limit)
    except OSError as exc:
        raise CliError(f"cannot write the studies under {out_dir}: {exc.strerror or exc}") from exc
    seconds = time.perf_counter() - started
    if not studies:
        click.echo(f"profile {profile}, {persons} persons, seed {seed}: no imaging studies to write")
        return
    modalities = Counter(s.modality for s in studies)
    files = [p for s in studies for p in (*s.instance_paths(), s.mask)]
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    click.echo(
        f"wrote {len(studies)} studies for profile {profile} ({persons} persons, seed {seed}) under {out_dir} "
        f"in {seconds:.1f} s"
    )
    click.echo(f"  modalities      {', '.join(f'{m} {n}' for m, n in sorted(modalities.items()))}")
    click.echo(f"  with a lesion   {sum(s.lesion for s in studies)}")
    click.echo(f"  files           {len(files):,} ({size_mb:.1f} MB)")
    click.echo(f"  accession ids   {studies[0].accession} … {studies[-1].accession}")


def _check_folder(out_dir: Path) -> None:
    """``--out`` must be a folder or creatable as one: a file in the way is a configuration error (exit 3)."""
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise config_error(f"--out {out_dir}: {path} exists and is not a folder")
            return


@imaging.command()
@click.option("--pacs-host", default="127.0.0.1", show_default=True, help="The PACS's DICOM host.")
@click.option("--pacs-port", type=click.IntRange(1, 65535), required=True, help="The PACS's DICOM port.")
@click.option("--pacs-ae-title", required=True, help="The PACS's AE title (the called AE).")
@click.option("--ae-title", default="FLIP", show_default=True, help="Our AE title (the calling AE).")
@click.option(
    "--from",
    "folder",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Folder of DICOM files (e.g. written by `generate`); every DICOM file below it is sent.",
)
def seed(pacs_host: str, pacs_port: int, pacs_ae_title: str, ae_title: str, folder: Path) -> None:
    """Store every DICOM file under a folder into a PACS by C-STORE (Orthanc or any DICOM SCP).

    Exit codes: 0 every instance stored, 1 the PACS refused some (or is unreachable), 2 usage.
    """
    try:
        client = PacsClient(pacs_host, pacs_port, pacs_ae_title, calling_ae_title=ae_title)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    started = time.perf_counter()
    try:
        stored = client.store_folder(folder)
    except StoreFailed as exc:
        raise CliError(
            f"the PACS stored {exc.result.stored} instance(s) but refused {len(exc.result.failed)}: "
            f"{exc.result.failed[0].reason if exc.result.failed else exc}"
        ) from exc
    except PacsError as exc:
        raise CliError(f"cannot seed the PACS: {exc}") from exc
    elapsed = time.perf_counter() - started
    click.echo(f"stored {stored} instance(s) in {pacs_ae_title}@{pacs_host}:{pacs_port} in {elapsed:.1f} s")
