"""Imaging import cost: ours (retrieve + de-identify + convert + store) vs dcm2niix alone, in one run.

Writes N synthetic studies (``--size clinical``, the default: 512 × 512 × 160 CT and 256 × 256 × 48 MR
series, the sizes a hospital PACS holds; ``--size demo``: the small 64 × 64 × 24 demo volumes), seeds them
into a PACS by C-STORE, then times:

- **dcm2niix** — dcm2niix alone on the same series, already on local disk, with the exact argument list
  our converter runs (:func:`flip_imaging.nifti.dcm2niix_command`) and as many at once as we import
  studies at once (the baseline);
- **ours** — the study importer on those accessions: C-FIND + C-GET from the PACS over real DICOM
  networking, PS3.15 de-identification of every instance, dcm2niix on the de-identified series with its
  checks, checksummed commit into the research store, the per-study state machine throughout.

The importer is set up as the service runs it: ``--parallel`` studies at once, each retrieved and
de-identified in one of ``--deid-workers`` worker processes (one per core). The PACS runs in a process of
its own, as a hospital's PACS does, but on the same cores: its work counts against ours. ``--pacs orthanc``
(the default when Orthanc is installed and we are root) is Orthanc, a C++ PACS like those hospitals run,
isolated in its own network namespace by the test suite's harness; ``--pacs embedded`` is pynetdicom's SCP
as in the demo, which spends about five times Orthanc's CPU serving a study (all of it in Python).
The baseline runs once before ours and once after, and the
mean of the two is the figure (the machine's speed drifts). Figures go to stdout, with the time each stage
of ours took (summed over the studies in flight) and where the CPU time went, and to
bench/results/imaging.json (``ratio`` = ours / dcm2niix in seconds; the target is 1.3).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

from flip_core.imaging import StudyState
from flip_imaging.deid import Deidentifier
from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.importer import StageTimes, StudyImporter
from flip_imaging.nifti import dcm2niix_command
from flip_imaging.pacs import PacsClient
from flip_imaging.store import ImageStore
from flip_imaging.studies import StudyLedger
from flip_imaging.synthetic import CLINICAL_SIZES, SyntheticStudy, VolumeSize, write_study
from flip_omop import ImagingStudy, get_profile, image_occurrences
from flip_omop.concepts import Modality

RESULTS = Path(__file__).resolve().parent / "results" / "imaging.json"
SIZES: Mapping[str, Mapping[Modality, VolumeSize]] = {"demo": {}, "clinical": CLINICAL_SIZES}
STAGES = ("find", "retrieve", "deid", "convert", "store")
PROFILE, SEED = "north", 3
PACS_AE, CLIENT_AE, HOST = "BENCHPACS", "FLIPBENCH", "127.0.0.1"
T = TypeVar("T")


@dataclass(frozen=True)
class Timed:
    """Wall seconds of one run, the machine's busy share meanwhile, and CPU seconds by whom."""

    wall_s: float
    busy: float
    cpu_self_s: float
    """This process: the importer's threads (C-FIND/C-GET client, de-identification unless in workers)."""
    cpu_children_s: float
    """Child processes that ended: dcm2niix with its pigz, and the de-identification workers."""


def timed(run: Callable[[], T]) -> tuple[T, Timed]:
    """Run ``run`` and measure it (children count once waited for)."""
    ticks, started = _cpu_ticks(), time.perf_counter()
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    value = run()
    wall = time.perf_counter() - started
    own_after, kids_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = _busy_share(ticks, _cpu_ticks())
    return value, Timed(wall, busy, _cpu(own_after) - _cpu(own), _cpu(kids_after) - _cpu(kids))


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat (zeros where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else float("nan")


# ------------------------------------------------------------------------------------------ the studies


def generate(count: int, out: Path, sizes: Mapping[Modality, VolumeSize], workers: int) -> list[SyntheticStudy]:
    """The first ``count`` studies of the north trust's synthetic data, ``workers`` at a time (not timed)."""
    studies: list[ImagingStudy] = list(islice(image_occurrences(get_profile(PROFILE), count * 4, SEED), count))
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(_write, s, out, sizes.get(s.modality)) for s in studies]
        return [f.result() for f in futures]


def _write(study: ImagingStudy, out: Path, size: VolumeSize | None) -> SyntheticStudy:
    return write_study(study, get_profile(PROFILE), SEED, out, size=size)


def _serve_pacs(storage: Path, conn: Connection) -> None:
    """The embedded PACS in a process of its own; answers each message with the CPU seconds it has used."""
    with EmbeddedPacs(storage, ae_title=PACS_AE) as pacs:
        conn.send(pacs.port)
        while conn.recv() != "stop":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            conn.send(usage.ru_utime + usage.ru_stime)


class PacsProcess:
    """:func:`_serve_pacs` in a spawned process, and a line to it."""

    name = "embedded (pynetdicom)"
    ae_title, client_ae_title = PACS_AE, CLIENT_AE

    def __init__(self, storage: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_pacs, args=(storage, child), daemon=True)
        self._process.start()
        self.port: int = self._conn.recv()

    def cpu_s(self) -> float:
        """CPU seconds the PACS process has used so far."""
        self._conn.send("cpu")
        return float(self._conn.recv())

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(timeout=30)


class OrthancPacs:
    """Orthanc (the Debian package) in a network namespace of its own, which this process then joins.

    The test suite's harness starts it (loopback only, nothing reachable from outside); the main thread
    moves into its namespace, so the importer, its worker processes and dcm2niix, all started from that
    thread afterwards, reach it on 127.0.0.1 as a trust reaches its PACS. Needs root and Orthanc.
    """

    name = "Orthanc"

    def __init__(self, workdir: Path) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trust" / "imaging-api" / "tests"))
        pacs_testing = importlib.import_module("pacs_testing")  # the Orthanc harness lives with its tests

        binary = pacs_testing.orthanc_binary()
        if binary is None:
            sys.exit("Orthanc is not installed (make system-deps), or pass --pacs embedded")
        # Orthanc's largest PDU (DCMTK's default is 16 kB): fewer, larger messages for our receiving side.
        self._orthanc = pacs_testing.OrthancUnderTest(workdir, binary, {"MaximumPduLength": 131072})
        self._orthanc.enter_namespace()
        self.port: int = self._orthanc.port
        self.ae_title, self.client_ae_title = pacs_testing.PACS_AE, pacs_testing.CLIENT_AE

    def cpu_s(self) -> float:
        """CPU seconds Orthanc has used so far."""
        return float(self._orthanc.cpu_s())

    def stop(self) -> None:
        self._orthanc.close()


def start_pacs(kind: str, workdir: Path) -> PacsProcess | OrthancPacs:
    """The PACS to import from: Orthanc when asked (or, with ``auto``, when it can run here), else embedded."""
    if kind == "auto":
        kind = "orthanc" if shutil.which("Orthanc") and os.geteuid() == 0 else "embedded"
    return OrthancPacs(workdir / "orthanc") if kind == "orthanc" else PacsProcess(workdir / "pacs")


# ------------------------------------------------------------------------------------------ the runs


def dcm2niix_alone(series: list[Path], out: Path, parallel: int) -> None:
    """dcm2niix on every series, ``parallel`` at a time (as our importer runs studies), with our arguments."""
    executable = shutil.which("dcm2niix")
    if executable is None:
        sys.exit("dcm2niix is not installed (make system-deps)")
    out.mkdir(parents=True)
    running: list[subprocess.Popen[bytes]] = []
    for i, folder in enumerate(series):
        target = out / str(i)
        target.mkdir()
        command = dcm2niix_command(executable, folder, target, "image")
        running.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while len(running) >= parallel:
            _reap(running)
    while running:
        _reap(running)


def _reap(running: list[subprocess.Popen[bytes]]) -> None:
    """Wait until any running process ends (not just the oldest), and drop it."""
    while True:
        for proc in running:
            if proc.poll() is not None:
                running.remove(proc)
                if proc.returncode != 0:
                    sys.exit(f"dcm2niix failed (exit {proc.returncode})")
                return
        time.sleep(0.002)


def ours(
    pacs: PacsClient, accessions: list[str], state: Path, parallel: int, deid_workers: int
) -> tuple[int, StageTimes]:
    """The importer on every accession; returns how many studies became READY and the per-stage times."""
    if deid_workers == 0:
        return asyncio.run(_ours(pacs, accessions, state, parallel, None))
    # Spawned rather than forked from a forkserver (as the service does) so that they are our children and
    # their CPU time is counted; started before the clock, as a service keeps them.
    with ProcessPoolExecutor(deid_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0.2] * deid_workers))
        return asyncio.run(_ours(pacs, accessions, state, parallel, pool))


async def _ours(
    pacs: PacsClient, accessions: list[str], state: Path, parallel: int, pool: Executor | None
) -> tuple[int, StageTimes]:
    stages = StageTimes()
    importer = StudyImporter(
        ledger=StudyLedger(state / "studies.sqlite3"),
        store=ImageStore(state / "images"),
        pacs=pacs,
        deid=Deidentifier(os.urandom(32)),
        parallel=parallel,
        deid_pool=pool,
        stage_times=stages,
    )
    project = uuid.uuid4()
    await importer.run(project, accessions, to_nifti=True)
    return importer.ledger.counts(project)[StudyState.READY], stages


# ------------------------------------------------------------------------------------------ main


def _size_label(written: list[SyntheticStudy]) -> str:
    shapes = sorted({(s.modality, s.phantom.grid.columns, s.phantom.grid.rows, s.n_instances) for s in written})
    return ", ".join(f"{m} {c}x{r}x{n}" for m, c, r, n in shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 2, help="studies at once (both sides)")
    parser.add_argument("--size", choices=sorted(SIZES), default="clinical", help="volume sizes (default clinical)")
    parser.add_argument(
        "--deid-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="de-identification worker processes, as the service runs (default one per core; 0: in the importer)",
    )
    parser.add_argument(
        "--pacs",
        choices=("auto", "orthanc", "embedded"),
        default="auto",
        help="the PACS to import from (default: Orthanc when installed and running as root, else embedded)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (studies, outputs)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flip-bench-imaging-"))
    try:
        run(args, root)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
    started = time.perf_counter()
    written = generate(args.studies, root / "studies", SIZES[args.size], args.parallel)
    n = len(written)
    instances = sum(s.n_instances for s in written)
    megabytes = sum(p.stat().st_size for s in written for p in s.instance_paths()) / 1e6
    print(
        f"{n} synthetic studies ({_size_label(written)}; {instances} instances, {megabytes:.0f} MB) "
        f"written in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    pacs = start_pacs(args.pacs, root)
    try:
        print(f"seeding the PACS: {pacs.name}...", flush=True)
        client = PacsClient(HOST, pacs.port, pacs.ae_title, calling_ae_title=pacs.client_ae_title)
        started = time.perf_counter()
        client.store_folder(root / "studies")
        print(
            f"seeded in {time.perf_counter() - started:.0f} s; timing dcm2niix alone, ours, dcm2niix alone", flush=True
        )
        series = [s.folder for s in written]
        _, before = timed(lambda: dcm2niix_alone(series, root / "baseline-1", args.parallel))
        pacs_cpu = pacs.cpu_s()
        accessions = [s.accession for s in written]
        (ready, stages), mine = timed(lambda: ours(client, accessions, root / "ours", args.parallel, args.deid_workers))
        pacs_cpu = pacs.cpu_s() - pacs_cpu
        _, after = timed(lambda: dcm2niix_alone(series, root / "baseline-2", args.parallel))
    finally:
        pacs.stop()
    if ready != n:
        sys.exit(f"only {ready} of {n} studies became READY")
    baseline_s = (before.wall_s + after.wall_s) / 2
    baseline_cpu = (before.cpu_children_s + after.cpu_children_s) / 2
    ours_cpu = mine.cpu_self_s + mine.cpu_children_s + pacs_cpu
    ratio = mine.wall_s / baseline_s
    out = {
        "studies": n,
        "instances": instances,
        "size": args.size,
        "pacs": pacs.name,
        "volumes": _size_label(written),
        "megabytes": round(megabytes, 1),
        "parallel": args.parallel,
        "deid_workers": args.deid_workers,
        "ours_s": round(mine.wall_s, 2),
        "dcm2niix_s": round(baseline_s, 2),
        "dcm2niix_runs_s": [round(before.wall_s, 2), round(after.wall_s, 2)],
        "ratio": round(ratio, 3),
        "ours_studies_per_s": round(n / mine.wall_s, 3),
        "dcm2niix_studies_per_s": round(n / baseline_s, 3),
        "stage_s_per_study": {name: round(stages.seconds.get(name, 0.0) / n, 3) for name in STAGES},
        "cpu_s_per_study": {
            "dcm2niix_alone": round(baseline_cpu / n, 3),
            "ours": round(ours_cpu / n, 3),
            "ours_importer_process": round(mine.cpu_self_s / n, 3),
            "ours_child_processes": round(mine.cpu_children_s / n, 3),
            "ours_pacs_process": round(pacs_cpu / n, 3),
        },
        "cpu_ratio": round(ours_cpu / baseline_cpu, 3),
        "cpu_busy": {"dcm2niix": round((before.busy + after.busy) / 2, 3), "ours": round(mine.busy, 3)},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "pigz": shutil.which("pigz") is not None},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"dcm2niix alone: {n / baseline_s:.3f} studies/s (baseline; {baseline_s:.1f} s, "
        f"the mean of {before.wall_s:.1f} and {after.wall_s:.1f})"
    )
    print(f"ours: {n / mine.wall_s:.3f} studies/s ({ratio:.2f}x vs dcm2niix alone, in time; target 1.3x)")
    total = sum(stages.seconds.values()) or 1.0
    for name in STAGES:
        spent = stages.seconds.get(name, 0.0)
        print(f"  stage {name}: {spent / n * 1000:.0f} ms/study ({spent / total:.0%} of ours, summed over workers)")
    print(
        f"cpu: {ours_cpu / n:.2f} s/study ({ours_cpu / baseline_cpu:.2f}x vs dcm2niix alone {baseline_cpu / n:.2f}) = "
        f"importer {mine.cpu_self_s / n:.2f} + dcm2niix and de-id workers {mine.cpu_children_s / n:.2f} "
        f"+ PACS {pacs_cpu / n:.2f}; machine busy {mine.busy:.0%} (baseline {(before.busy + after.busy) / 2:.0%})"
    )
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
