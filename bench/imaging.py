"""Imaging import cost: ours (retrieve + de-identify + convert + store) vs dcm2niix alone, in one run.

Writes N synthetic CT/MR studies, seeds them into the embedded PACS (pynetdicom, loopback), then times:

- **dcm2niix** — dcm2niix alone on the same studies' files, already on local disk (the baseline);
- **ours** — the study importer on those accessions: C-FIND + C-GET from the PACS, PS3.15
  de-identification of every instance, dcm2niix on the de-identified series, checksummed commit into the
  research store, the per-study state machine throughout.

Figures go to stdout and bench/results/imaging.json (``ratio`` = ours / dcm2niix; the target is 1.3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from flip_core.imaging import StudyState
from flip_imaging.deid import Deidentifier
from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.importer import StudyImporter
from flip_imaging.pacs import PacsClient
from flip_imaging.store import ImageStore
from flip_imaging.studies import StudyLedger
from flip_imaging.synthetic import write_studies
from flip_omop import get_profile

RESULTS = Path(__file__).resolve().parent / "results" / "imaging.json"


def dcm2niix_alone(studies_dir: Path, out: Path, parallel: int) -> float:
    """dcm2niix on every synthetic series, ``parallel`` at a time (as our importer runs studies)."""
    series = sorted(p for p in studies_dir.glob("*/*") if p.is_dir())
    started = time.perf_counter()
    running: list[subprocess.Popen[bytes]] = []
    for i, folder in enumerate(series):
        target = out / str(i)
        target.mkdir(parents=True)
        cmd = ["dcm2niix", "-z", "y", "-b", "y", "-f", "image", "-o", str(target), str(folder)]
        running.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if len(running) >= parallel:
            running.pop(0).wait()
    for proc in running:
        proc.wait()
    return time.perf_counter() - started


async def ours(pacs: EmbeddedPacs, accessions: list[str], state: Path, parallel: int) -> tuple[float, int]:
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("forkserver")) as pool:
        pool.submit(int).result()  # start the workers before the clock does
        return await _ours(pacs, accessions, state, parallel, pool)


async def _ours(
    pacs: EmbeddedPacs, accessions: list[str], state: Path, parallel: int, pool: ProcessPoolExecutor
) -> tuple[float, int]:
    importer = StudyImporter(
        ledger=StudyLedger(state / "studies.sqlite3"),
        store=ImageStore(state / "images"),
        pacs=PacsClient(pacs.host, pacs.port, pacs.ae_title, calling_ae_title="FLIPBENCH"),
        deid=Deidentifier(os.urandom(32)),
        parallel=parallel,
        deid_pool=pool,
    )
    project = uuid.uuid4()
    started = time.perf_counter()
    await importer.run(project, accessions, to_nifti=True)
    elapsed = time.perf_counter() - started
    return elapsed, importer.ledger.counts(project)[StudyState.READY]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flip-bench-imaging-"))
    written = write_studies(get_profile("north"), args.studies * 4, 3, root / "studies", limit=args.studies)
    instances = sum(s.n_instances for s in written)
    print(f"{len(written)} synthetic studies ({instances} instances); seeding the embedded PACS...", flush=True)
    with EmbeddedPacs(root / "pacs", ae_title="BENCHPACS") as pacs:
        PacsClient(pacs.host, pacs.port, pacs.ae_title, calling_ae_title="FLIPBENCH").store_folder(root / "studies")
        baseline_s = dcm2niix_alone(root / "studies", root / "baseline", args.parallel)
        ours_s, ready = asyncio.run(ours(pacs, [s.accession for s in written], root / "ours", args.parallel))
    if ready != len(written):
        sys.exit(f"only {ready} of {len(written)} studies became READY")
    ratio = ours_s / baseline_s
    out = {
        "studies": len(written),
        "instances": instances,
        "parallel": args.parallel,
        "ours_s": round(ours_s, 2),
        "dcm2niix_s": round(baseline_s, 2),
        "ratio": round(ratio, 3),
        "ours_studies_per_s": round(len(written) / ours_s, 1),
        "dcm2niix_studies_per_s": round(len(written) / baseline_s, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"dcm2niix alone: {baseline_s:.2f} s ({out['dcm2niix_studies_per_s']} studies/s)")
    print(f"ours (retrieve + de-identify + convert + store): {ours_s:.2f} s ({out['ours_studies_per_s']} studies/s)")
    print(f"ratio: {ratio:.2f}x dcm2niix alone (target 1.3)")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
