"""``flip trust imaging``: the trust's imaging — synthetic DICOM studies for its PACS.

    flip trust imaging generate --persons N [--seed S] [--profile north|south|east] --out DIR [--limit N]
    flip trust imaging seed --pacs-port P --pacs-ae-title AE --from DIR

``generate`` writes one small DICOM series (and its organ mask) per imaging study of the synthetic
OMOP dataset with the same ``--persons``, ``--seed`` and ``--profile``, so the accession ids the
cohort queries return are the ones the PACS holds.  Exit codes: 0 ok, 1 failure while writing (disk
full, permission denied), 2 usage, 3 configuration (``--out`` or one of its parents is not a folder).
``seed`` sends those files to a PACS (the embedded one or Orthanc) by C-STORE.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import click

from flip_cli.errors import CliError, config_error
from flip_imaging.pacs import PacsClient, PacsError, StoreFailed
from flip_imaging.synthetic import write_studies
from flip_omop import PROFILE_NAMES, get_profile


@click.group()
def imaging() -> None:
    """The trust's imaging: synthetic DICOM studies matching its OMOP data."""


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
