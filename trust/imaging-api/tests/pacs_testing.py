"""Test harness for the PACS adapter: tiny DICOM studies, and the two real PACS the suite runs against.

`running_pacs("embedded" | "orthanc", workdir)` yields a `PacsUnderTest`, one interface over both:

* **embedded** — `flip_imaging.embedded_pacs.EmbeddedPacs` on 127.0.0.1 in this process.
* **orthanc** — a real Orthanc (Debian package) in its own network namespace. Orthanc has no bind-address
  option, so isolation comes from the namespace: a small launcher (`_NETNS_LAUNCHER`) unshares a fresh
  network namespace that holds only a loopback interface, brings `lo` up and execs Orthanc, whose DICOM
  and HTTP ports are therefore reachable from nowhere but that namespace. The test process stays in the
  host namespace; its DICOM client calls run on worker threads that `setns()` into Orthanc's namespace
  (network namespaces are per thread, and threads those workers start — pynetdicom's association
  threads — inherit it). `PacsUnderTest.call(fn, ...)` runs a blocking call there; the client's async
  wrappers use the same pool. Seeding is by C-STORE from that client, deletion by Orthanc's REST API,
  also from inside the namespace.

Every process started here is stopped by PID when the context exits, including on test failure; the
launcher also sets PR_SET_PDEATHSIG so Orthanc dies with the test process if that is killed outright.
Needs root (or CAP_SYS_ADMIN) for the namespace; skips only when the Orthanc binary is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.pacs import PacsClient, PacsError, PacsTimeouts

P = ParamSpec("P")
T = TypeVar("T")

CLIENT_AE = "FLIP_TEST"
PACS_AE = "TEST_PACS"
ORTHANC_DICOM_PORT = 4242  # inside its own namespace, so a fixed port never collides with anything
ORTHANC_HTTP_PORT = 8042
TEST_TIMEOUTS = PacsTimeouts(connect=3.0, association=10.0, response=20.0, network=20.0)
_CLONE_NEWNET = 0x40000000

PACS_KINDS = ("embedded", "orthanc")
# For parametrising: Orthanc is a real process, so its cases carry the `slow` marker.
PACS_PARAMS = (pytest.param("embedded"), pytest.param("orthanc", marks=pytest.mark.slow))


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when the Debian package is not installed."""
    return shutil.which("Orthanc")


# --------------------------------------------------------------------------------------------- tiny studies


@dataclass(frozen=True)
class SyntheticStudy:
    """A study written by `write_study`: its identifiers and the files on disk."""

    study_uid: str
    accession: str
    patient_id: str
    sop_uids: tuple[str, ...]
    paths: tuple[Path, ...]


def write_study(
    folder: Path,
    *,
    accession: str,
    patient_id: str = "PAT-1",
    series: int = 1,
    instances: int = 2,
    modality: str = "CT",
    study_uid: str | None = None,
) -> SyntheticStudy:
    """Write a tiny study (8x8 16-bit slices, Explicit VR Little Endian) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    sop_uids: list[str] = []
    paths: list[Path] = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(instances):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.AccessionNumber = accession
            ds.PatientID = patient_id
            ds.PatientName = "Test^Patient"
            ds.StudyDate = "20240102"
            ds.StudyTime = "101500"
            ds.Modality = modality
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [0.0, 0.0, float(i)]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [1.0, 1.0]
            ds.SliceThickness = 1.0
            ds.Rows = ds.Columns = 8
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.PixelData = (np.arange(64, dtype=np.uint16) + 100 * s + i).tobytes()
            path = folder / f"s{s}_i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sop_uids.append(sop_uid)
            paths.append(path)
    return SyntheticStudy(study_uid, accession, patient_id, tuple(sop_uids), tuple(paths))


# --------------------------------------------------------------------------------------------- the interface


class PacsUnderTest(ABC):
    """One running PACS, whichever implementation, as the behavioural tests see it."""

    name: str
    host: str
    port: int
    ae_title: str = PACS_AE

    def client(
        self, *, called_ae_title: str | None = None, port: int | None = None, calling_ae_title: str = CLIENT_AE
    ) -> PacsClient:
        """A `PacsClient` for this PACS whose async wrappers run where the PACS is reachable."""
        return PacsClient(
            self.host,
            port or self.port,
            called_ae_title or self.ae_title,
            calling_ae_title=calling_ae_title,
            timeouts=TEST_TIMEOUTS,
            executor=self.executor,
        )

    @property
    def executor(self) -> Executor | None:
        """Where the client's blocking calls must run; None means any thread of this process."""
        return None

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking call (usually a `PacsClient` method) where the PACS is reachable."""
        if self.executor is None:
            return fn(*args, **kwargs)
        return self.executor.submit(fn, *args, **kwargs).result(timeout=120)

    def seed(self, folder: Path) -> int:
        """C-STORE every DICOM file under `folder` into this PACS."""
        return self.call(self.client().store_folder, folder)

    @abstractmethod
    def listening_addresses(self) -> set[str]:
        """Every address on which the PACS's DICOM port accepts connections, as "ip:port"."""

    @abstractmethod
    def delete_study(self, study_uid: str) -> None:
        """Remove a study behind the client's back (to simulate a study disappearing)."""

    @abstractmethod
    def kill(self) -> None:
        """Take the PACS down abruptly, as a crash would."""

    @abstractmethod
    def close(self) -> None:
        """Stop everything this harness started. Idempotent."""


class EmbeddedPacsUnderTest(PacsUnderTest):
    """The embedded pynetdicom PACS in this process."""

    name = "embedded"

    def __init__(self, workdir: Path) -> None:
        self.pacs = EmbeddedPacs(workdir / "embedded-pacs", ae_title=PACS_AE).start()
        self.host = self.pacs.host
        self.port = self.pacs.port

    def listening_addresses(self) -> set[str]:
        """Listening sockets on our port in this (the host) namespace."""
        return {a for a in _listening(Path("/proc/net")) if a.endswith(f":{self.port}")}

    def delete_study(self, study_uid: str) -> None:
        """Delete through the embedded PACS's own API."""
        assert self.pacs.delete_study(study_uid) > 0

    def kill(self) -> None:
        """Stop listening (the port stays closed)."""
        self.pacs.stop()

    def close(self) -> None:
        """Stop the server."""
        self.pacs.stop()


# --------------------------------------------------------------------------------------------- Orthanc

# Runs as `python -c _NETNS_LAUNCHER <Orthanc> <config.json>`: new network namespace, loopback up, exec.
# Bringing `lo` up with SIOCSIFFLAGS here means the harness does not depend on iproute2's `ip`.
_NETNS_LAUNCHER = r"""
import ctypes, fcntl, os, signal, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test process; survives exec
if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
    sys.exit("unshare(CLONE_NEWNET) failed: %s (root or CAP_SYS_ADMIN needed)" % os.strerror(ctypes.get_errno()))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ifreq = struct.pack("16sH22s", b"lo", 0, b"")
flags = struct.unpack("16sH22s", fcntl.ioctl(sock, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
fcntl.ioctl(sock, 0x8914, struct.pack("16sH22s", b"lo", flags | 0x1, b""))  # SIOCSIFFLAGS, IFF_UP
sock.close()
os.execv(sys.argv[1], sys.argv[1:])
"""


def _enter_netns(ns_fd: int) -> None:
    """ThreadPoolExecutor initializer: move this worker thread into the namespace behind `ns_fd`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(ns_fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET) into Orthanc's namespace failed")


def orthanc_config(workdir: Path) -> dict[str, Any]:
    """Orthanc settings for the tests: temp storage, no plugins, only our client AE known."""
    return {
        "Name": "flip-test-orthanc",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "StorageCompression": False,
        "Plugins": [],
        # HTTP is only for deleting studies in a test; the namespace holds nothing but loopback anyway.
        "HttpServerEnabled": True,
        "HttpPort": ORTHANC_HTTP_PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": PACS_AE,
        "DicomPort": ORTHANC_DICOM_PORT,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {
            "flip": {
                "AET": CLIENT_AE,
                "Host": "127.0.0.1",
                "Port": 11112,  # unused: C-GET answers on our own association
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": True,
                "AllowMove": False,
                "AllowStore": True,
            }
        },
        "OverwriteInstances": True,
        "SaveJobs": False,
        "StableAge": 1,
        "ConcurrentJobs": 2,
        "DicomScpTimeout": 30,
    }


class OrthancUnderTest(PacsUnderTest):
    """A real Orthanc in its own network namespace, driven from threads that joined that namespace."""

    name = "orthanc"
    host = "127.0.0.1"
    port = ORTHANC_DICOM_PORT

    def __init__(self, workdir: Path, binary: str, settings: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        (workdir / "storage").mkdir(parents=True, exist_ok=True)
        (workdir / "index").mkdir(parents=True, exist_ok=True)
        config = workdir / "orthanc.json"
        config.write_text(json.dumps({**orthanc_config(workdir), **(settings or {})}, indent=2))
        self.log_path = workdir / "orthanc.log"
        self._ns_fd: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        with self.log_path.open("wb") as log:
            # Started from the test's main thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits.
            self.process = subprocess.Popen(
                [sys.executable, "-c", _NETNS_LAUNCHER, binary, str(config)],
                # DCMTK (Orthanc's DICOM stack) as packaged by Debian leaves Nagle's algorithm on unless told;
                # with it, every C-STORE / C-GET sub-operation waits ~40 ms for a delayed ACK (10x slower).
                env={**os.environ, "TCP_NODELAY": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._join_namespace()
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def executor(self) -> Executor | None:
        """The pool of threads living in Orthanc's namespace."""
        return self._pool

    def log_tail(self, lines: int = 30) -> str:
        """The end of Orthanc's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _join_namespace(self) -> None:
        # The launcher unshares after it starts, so wait until its namespace differs from ours, then keep
        # an fd on it: the namespace outlives a killed Orthanc and a recycled PID cannot fool us.
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc launcher exited with {self.process.returncode}:\n{self.log_tail()}")
            fd = os.open(f"/proc/{self.process.pid}/ns/net", os.O_RDONLY)
            if os.fstat(fd).st_ino != own:
                self._ns_fd = fd
                break
            os.close(fd)
            if time.monotonic() > deadline:
                raise RuntimeError("Orthanc launcher never left the host network namespace")
            time.sleep(0.01)
        self._pool = ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="orthanc-netns", initializer=_enter_netns, initargs=(self._ns_fd,)
        )

    def enter_namespace(self) -> None:
        """Move the calling thread into Orthanc's namespace; threads and processes it starts later are there too.

        For a benchmark that runs a whole client stack (worker processes included) next to Orthanc.
        """
        assert self._ns_fd is not None
        _enter_netns(self._ns_fd)

    def cpu_s(self) -> float:
        """CPU seconds Orthanc has used so far (user + system, from /proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.call(client.echo)
                return
            except PacsError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer C-ECHO within 30 s:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def interfaces(self) -> set[str]:
        """Network interfaces Orthanc can see (its namespace's /proc/<pid>/net/dev)."""
        lines = Path(f"/proc/{self.process.pid}/net/dev").read_text().splitlines()[2:]
        return {line.split(":", 1)[0].strip() for line in lines}

    def in_own_namespace(self) -> bool:
        """True if Orthanc's network namespace is not the test process's."""
        return os.stat(f"/proc/{self.process.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino

    def listening_addresses(self) -> set[str]:
        """Listening sockets inside Orthanc's namespace (DICOM and HTTP)."""
        return _listening(Path(f"/proc/{self.process.pid}/net"))

    def rest(self, method: str, path: str, body: bytes | None = None) -> Any:
        """Call Orthanc's REST API from inside its namespace; returns the decoded JSON (or None)."""

        def request() -> Any:
            req = urllib.request.Request(f"http://127.0.0.1:{ORTHANC_HTTP_PORT}{path}", data=body, method=method)
            with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 (fixed loopback URL)
                payload = response.read()
            return json.loads(payload) if payload else None

        return self.call(request)

    def delete_study(self, study_uid: str) -> None:
        """Delete through REST: look the UID up, then DELETE /studies/{id}."""
        found = self.rest("POST", "/tools/lookup", study_uid.encode())
        ids = [item["ID"] for item in found if item.get("Type") == "Study"]
        assert ids, f"Orthanc does not hold study {study_uid}"
        for orthanc_id in ids:
            self.rest("DELETE", f"/studies/{orthanc_id}")

    def kill(self) -> None:
        """SIGKILL Orthanc; the namespace stays alive (our fd and threads), with nothing listening."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self) -> None:
        """Stop Orthanc by PID (SIGTERM, then SIGKILL), the namespace threads and the namespace fd."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None


def _listening(proc_net: Path) -> set[str]:
    """LISTEN sockets from a /proc/.../net directory, as "ip:port" (IPv6 addresses as "[hex]:port")."""
    found: set[str] = set()
    for name in ("tcp", "tcp6"):
        table = proc_net / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            # /proc prints IPv4 addresses as one little-endian hex word; IPv6 ones are left as hex.
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(address))) if name == "tcp" else f"[{address}]"
            found.add(f"{ip}:{int(port, 16)}")
    return found


@contextlib.contextmanager
def running_pacs(kind: str, workdir: Path) -> Iterator[PacsUnderTest]:
    """Start the PACS of `kind` ("embedded" or "orthanc") under `workdir`; always stop it afterwards."""
    pacs: PacsUnderTest
    if kind == "embedded":
        pacs = EmbeddedPacsUnderTest(workdir)
    elif kind == "orthanc":
        binary = orthanc_binary()
        if binary is None:
            pytest.skip("Orthanc is not installed (Debian package 'orthanc'; `make system-deps` installs it)")
        pacs = OrthancUnderTest(workdir, binary)
    else:
        raise ValueError(f"unknown PACS kind {kind!r}")
    try:
        yield pacs
    finally:
        pacs.close()
