"""Talk standard DICOM networking to a hospital PACS: C-ECHO, C-FIND, C-GET and C-STORE.

`PacsClient` is the one adapter the imaging-api uses for any DICOM Query/Retrieve SCP (Orthanc, a clinical
PACS, or the embedded pynetdicom SCP of `flip_imaging.embedded_pacs`). pynetdicom is thread-based, so every
operation here is a blocking call that opens one association, does its work and releases it; the `*_async`
wrappers run those calls in a worker thread so an asyncio service never blocks its event loop.

Failures are values the caller can act on: `PacsUnavailable`, `StudyNotFound`, `AmbiguousAccession`,
`RetrieveFailed`, `QueryFailed`, `StoreFailed`, and the `ValueError` subclasses `InvalidAccession` /
`InvalidUid`, which are raised before anything is sent. Each carries a machine `code` for FAILED reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar, cast

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext

__all__ = [
    "DEFAULT_MAX_PDU",
    "DEFAULT_STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "AmbiguousAccession",
    "InstanceSink",
    "InvalidAccession",
    "InvalidUid",
    "PacsClient",
    "PacsError",
    "PacsTimeouts",
    "PacsUnavailable",
    "QueryFailed",
    "RetrieveFailed",
    "RetrieveResult",
    "StoreFailed",
    "StoreFailure",
    "StoreResult",
    "StudyMatch",
    "StudyNotFound",
    "disable_nagle",
    "is_dicom_file",
    "is_uid",
    "iter_dicom_files",
    "quiet_protocol_logging",
    "validate_accession",
    "validate_uid",
]

# SOP classes spelled out: pynetdicom.sop_class builds its names at import time, invisible to type checkers.
Verification = UID("1.2.840.10008.1.1")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Digits and dots only, at most 64 characters (PS3.5 §9.1). Deliberately lenient about leading zeros, which
# real scanners emit; what matters here is that a UID can never contain a path separator or "..".
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
_UID_MAX_LEN = 64
# AccessionNumber is VR SH: at most 16 characters, no backslash (the VM separator), no control characters.
_ACCESSION_MAX_LEN = 16
_DICOM_WILDCARDS = ("*", "?")

# Statuses, PS3.4 Annex C: 0xFF00/0xFF01 pending; 0xB000-0xBFFF (and 0x0001, 0x0107, 0x0116) warning.
_PENDING = frozenset({0xFF00, 0xFF01})
_CANCEL = 0xFE00
_STORE_OK = frozenset({0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})
# C-STORE statuses we answer with while receiving a C-GET.
_STATUS_OUT_OF_RESOURCES = 0xA700
_STATUS_CANNOT_UNDERSTAND = 0xC000

# Storage SOP classes proposed (with the SCP role) when retrieving by C-GET. An association holds at most
# 128 presentation contexts, so we cannot propose every storage class pynetdicom knows; these cover the
# modalities research imaging uses. Pass `storage_sop_classes` to PacsClient to change the list.
DEFAULT_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR (the dose report in most CT studies)
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
)

# The transfer syntaxes we propose for received instances (and the embedded PACS accepts). Uncompressed
# first: the acceptor usually takes the first syntax it supports, and then a PACS holding compressed files
# decompresses for us (lossless) instead of us receiving something we cannot convert. Kept short on purpose:
# pynetdicom's acceptor negotiation cost grows with contexts x syntaxes (all 45 cost ~50 ms per association).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
)
_MAX_CONTEXTS = 128

DEFAULT_MAX_PDU = 1 << 20
"""The largest PDU we tell a PACS it may send us (bytes). pynetdicom's default of 16 kB cuts one 512 x 512 CT
slice into 32 PDUs, each encoded and decoded in Python on both sides; 1 MiB carries a slice in one, and
still bounds what one PDU can make us buffer."""

InstanceSink = Callable[[Dataset], object]
"""Takes each instance a C-GET delivers, on the receiving thread, instead of it being written to disk.

The dataset is decoded as received (nothing converted), with ``file_meta`` holding the transfer syntax it
arrived in and its SOP class and instance UIDs; the sink owns it. An exception refuses the instance."""


# --------------------------------------------------------------------------------------------- errors


class PacsError(Exception):
    """Base class of every PACS failure; `code` is a stable machine-readable reason."""

    code: ClassVar[str] = "pacs_error"


class PacsUnavailable(PacsError):
    """The PACS could not be reached, refused the association, or dropped it."""

    code = "pacs_unavailable"


class InvalidAccession(PacsError, ValueError):
    """An accession number that must not be sent: blank, a wildcard, too long, or with forbidden characters."""

    code = "invalid_accession"


class InvalidUid(PacsError, ValueError):
    """A value that is not a DICOM UID (digits and dots, at most 64 characters)."""

    code = "invalid_uid"


class QueryFailed(PacsError):
    """The PACS answered a C-FIND with a failure status."""

    code = "query_failed"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StudyNotFound(PacsError):
    """No study matches: an unknown accession, or a study that no longer exists on the PACS."""

    code = "study_not_found"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AmbiguousAccession(PacsError):
    """More than one study carries the same accession number, so none can be picked safely."""

    code = "ambiguous_accession"

    def __init__(self, accession: str, matches: Sequence[StudyMatch]) -> None:
        super().__init__(f"accession {accession!r} matches {len(matches)} studies on the PACS")
        self.accession = accession
        self.matches = tuple(matches)


class RetrieveFailed(PacsError):
    """The PACS refused or aborted a C-GET; `result` says what did arrive (files stay under `dest`)."""

    code = "retrieve_failed"

    def __init__(self, message: str, status: int | None = None, result: RetrieveResult | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.result = result


class StoreFailed(PacsError):
    """At least one instance could not be stored on the PACS."""

    code = "store_failed"

    def __init__(self, message: str, result: StoreResult) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class PacsTimeouts:
    """Seconds to wait for each phase of a DICOM conversation; no call can hang forever."""

    connect: float = 5.0  # TCP connect
    association: float = 10.0  # A-ASSOCIATE negotiation (ACSE)
    response: float = 60.0  # each DIMSE response, e.g. between two C-GET pending responses
    network: float = 60.0  # an idle connection


@dataclass(frozen=True, slots=True)
class StudyMatch:
    """One study returned by a study-level C-FIND."""

    study_uid: str
    accession: str | None
    patient_id: str | None
    study_date: str | None  # DICOM DA, YYYYMMDD, as the PACS sent it
    modalities: tuple[str, ...]
    instance_count: int | None  # NumberOfStudyRelatedInstances, when the PACS computes it


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    """Outcome of one study-level C-GET.

    `received` counts instances written under `dest` (or taken by the sink, which then has the files: `files`
    is empty); `failed` counts sub-operations that failed, on the PACS side (as reported) or ours (an instance
    we refused or could not write); `status` is the final C-GET status (0x0000 success, 0xB000 some
    sub-operations failed).
    """

    study_uid: str
    dest: Path
    received: int
    failed: int
    warnings: int
    status: int | None
    files: tuple[Path, ...]

    @property
    def complete(self) -> bool:
        """True when every sub-operation succeeded and something arrived."""
        return self.failed == 0 and self.received > 0 and self.status == 0x0000


@dataclass(frozen=True, slots=True)
class StoreFailure:
    """One instance the PACS did not take, with the C-STORE status when there was one."""

    path: Path
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """Outcome of `PacsClient.store`."""

    stored: int
    failed: tuple[StoreFailure, ...] = ()


@dataclass(slots=True)
class _Received:
    """What the C-STORE handler saw during one C-GET; touched by one association thread only."""

    files: dict[str, Path] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)  # SOP instance UIDs handed to a sink
    refused: int = 0
    sink_error: Exception | None = None


# --------------------------------------------------------------------------------------------- transport


def quiet_protocol_logging() -> None:
    """Skip pynetdicom's per-PDU and per-message log handlers unless its logger would emit INFO.

    Those handlers format a description of every PDU and DIMSE message whether or not it is logged, which
    costs about a tenth of the CPU a C-GET takes on either side. Read when an association (or a server)
    is created, so call this just before; with INFO logging on for pynetdicom the descriptions stay.
    """
    emit = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if emit else "none"


def disable_nagle(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: set TCP_NODELAY on the association's socket.

    pynetdicom writes a DIMSE message as several small PDUs and leaves Nagle's algorithm on, so each
    message waits out the peer's delayed ACK (~40 ms on Linux): 100 tiny instances took 5 s by C-STORE or
    C-GET instead of 0.7 s. Bound on both sides (client and embedded PACS).
    """
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        with contextlib.suppress(OSError):  # a socket closed in the meantime needs no tuning
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --------------------------------------------------------------------------------------------- validation


def is_uid(value: object) -> bool:
    """True if `value` is a string shaped like a DICOM UID (so it is also a safe file name)."""
    return isinstance(value, str) and len(value) <= _UID_MAX_LEN and _UID_RE.fullmatch(value) is not None


def validate_uid(value: str, what: str = "UID") -> str:
    """Return `value` if it is a UID, else raise `InvalidUid`."""
    if not is_uid(value):
        raise InvalidUid(f"{what} {value!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return value


def validate_accession(accession: str) -> str:
    """Return the accession to send (padding spaces stripped) or raise `InvalidAccession`.

    C-FIND treats `*` and `?` as wildcards and a backslash as a list of values, so one of those in an
    accession would turn an exact lookup into a search over other patients' studies; a blank value is
    universal matching and would return every study. Those are refused before anything is sent.
    """
    if not isinstance(accession, str):
        raise InvalidAccession(f"accession must be a string, not {type(accession).__name__}")
    value = accession.strip(" ")  # DICOM pads SH with spaces; they are not significant
    if not value.strip():
        raise InvalidAccession("accession is blank: a blank C-FIND key would match every study")
    found = [c for c in (*_DICOM_WILDCARDS, "\\") if c in value]
    if found:
        raise InvalidAccession(
            f"accession {accession!r} contains {' '.join(found)}: DICOM wildcards and backslashes are refused, "
            "only exact accession numbers are looked up"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidAccession(f"accession {accession!r} contains control characters")
    if len(value) > _ACCESSION_MAX_LEN:
        raise InvalidAccession(f"accession {accession!r} is longer than {_ACCESSION_MAX_LEN} characters (VR SH)")
    return value


def is_dicom_file(path: Path) -> bool:
    """True if `path` is a DICOM Part-10 file (the "DICM" marker after the 128-byte preamble)."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def iter_dicom_files(folder: Path) -> Iterator[Path]:
    """Every DICOM Part-10 file under `folder`, recursively, in a stable order; other files are skipped."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and is_dicom_file(path):
            yield path


def _status_of(status: Dataset) -> int | None:
    """The Status of a response, or None when pynetdicom gave an empty one (timeout, abort, bad reply)."""
    value = getattr(status, "Status", None)
    return int(value) if value is not None else None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _study_match(identifier: Dataset) -> StudyMatch | None:
    study_uid = _text(identifier, "StudyInstanceUID")
    if study_uid is None or not is_uid(study_uid):
        logger.warning("PACS returned a study without a valid StudyInstanceUID; ignored")
        return None
    modalities_raw = identifier.get("ModalitiesInStudy")
    if modalities_raw is None or modalities_raw == "":
        modalities: tuple[str, ...] = ()
    elif isinstance(modalities_raw, str):
        modalities = (modalities_raw,)
    else:
        modalities = tuple(str(m) for m in modalities_raw)
    count_raw = identifier.get("NumberOfStudyRelatedInstances")
    try:
        count = int(count_raw) if count_raw not in (None, "") else None
    except (TypeError, ValueError):
        count = None
    return StudyMatch(
        study_uid=study_uid,
        accession=_text(identifier, "AccessionNumber"),
        patient_id=_text(identifier, "PatientID"),
        study_date=_text(identifier, "StudyDate"),
        modalities=tuple(sorted({m for m in modalities if m})),
        instance_count=count,
    )


# --------------------------------------------------------------------------------------------- client


class PacsClient:
    """A DICOM Query/Retrieve SCU for one PACS.

    Every call opens its own association (a fresh pynetdicom AE), so one client may be shared by threads.
    `executor`, when given, runs the `*_async` wrappers (e.g. a bounded pool); otherwise `asyncio.to_thread`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        called_ae_title: str,
        *,
        calling_ae_title: str = "FLIP",
        timeouts: PacsTimeouts | None = None,
        storage_sop_classes: Sequence[str] = DEFAULT_STORAGE_SOP_CLASSES,
        executor: Executor | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"PACS port {port} is out of range")
        if max_pdu != 0 and not 4096 <= max_pdu < 2**32:
            raise ValueError("max_pdu is 0 (no limit) or between 4096 and 2**32 - 1 bytes")
        if len(storage_sop_classes) + 1 > _MAX_CONTEXTS:
            raise ValueError(f"at most {_MAX_CONTEXTS - 1} storage SOP classes fit in one C-GET association")
        self.host = host
        self.port = port
        self.called_ae_title = called_ae_title
        self.calling_ae_title = calling_ae_title
        self.timeouts = timeouts or PacsTimeouts()
        self.storage_sop_classes = tuple(storage_sop_classes)
        self._executor = executor
        self.max_pdu = max_pdu
        AE(ae_title=calling_ae_title)  # validate the AE title now rather than on the first call

    def __repr__(self) -> str:
        return f"PacsClient({self.calling_ae_title} -> {self.called_ae_title}@{self.host}:{self.port})"

    def __getstate__(self) -> dict[str, Any]:
        # A client sent to a worker process leaves its executor behind: there `*_async` use asyncio.to_thread.
        return {**self.__dict__, "_executor": None}

    # ---------------------------------------------------------------- association plumbing

    def _new_ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae_title)
        ae.connection_timeout = self.timeouts.connect
        ae.acse_timeout = self.timeouts.association
        ae.dimse_timeout = self.timeouts.response
        ae.network_timeout = self.timeouts.network
        return ae

    @contextmanager
    def _association(
        self,
        contexts: Sequence[PresentationContext],
        *,
        roles: Sequence[Any] = (),
        handlers: Sequence[EventHandlerType] = (),
    ) -> Iterator[Association]:
        """Open an association or raise `PacsUnavailable`; always release (or abort) it afterwards."""
        ae = self._new_ae()
        ae.requested_contexts = list(contexts)
        quiet_protocol_logging()
        try:
            assoc = ae.associate(
                self.host,
                self.port,
                ae_title=self.called_ae_title,
                max_pdu=self.max_pdu,
                ext_neg=list(roles) or None,
                evt_handlers=[(evt.EVT_CONN_OPEN, disable_nagle), *handlers],
            )
        except (OSError, RuntimeError) as exc:
            raise PacsUnavailable(f"cannot reach PACS {self._where()}: {exc}") from exc
        if not assoc.is_established:
            raise PacsUnavailable(self._why_not_established(assoc))
        try:
            yield assoc
        finally:
            if assoc.is_established:
                try:
                    assoc.release()
                except Exception:  # releasing is best effort; the result is already known
                    logger.debug("release failed; aborting", exc_info=True)
                    assoc.abort()

    def _where(self) -> str:
        return f"{self.called_ae_title}@{self.host}:{self.port}"

    def _why_not_established(self, assoc: Association) -> str:
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            detail = f"{getattr(rsp, 'result_str', '?')}: {getattr(rsp, 'reason_str', '?')}" if rsp else "rejected"
            return f"PACS {self._where()} rejected the association ({detail})"
        if assoc.is_aborted:
            return f"PACS {self._where()} aborted the association (no acceptable presentation context?)"
        return f"cannot reach PACS {self._where()} (connection refused or timed out)"

    def _lost(self, operation: str) -> PacsUnavailable:
        return PacsUnavailable(f"{operation}: PACS {self._where()} timed out or dropped the association")

    # ---------------------------------------------------------------- C-ECHO

    def echo(self) -> float:
        """C-ECHO the PACS and return the round trip in seconds, association set-up included."""
        start = time.perf_counter()
        with self._association([build_context(Verification)]) as assoc:
            status = _status_of(assoc.send_c_echo())
        if status is None:
            raise self._lost("C-ECHO")
        if status != 0x0000:
            raise PacsUnavailable(f"PACS {self._where()} answered C-ECHO with status 0x{status:04X}")
        return time.perf_counter() - start

    # ---------------------------------------------------------------- C-FIND

    def _find(self, query: Dataset, what: str) -> list[StudyMatch]:
        context = build_context(StudyRootQueryRetrieveInformationModelFind)
        matches: dict[str, StudyMatch] = {}
        with self._association([context]) as assoc:
            for status_ds, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                status = _status_of(status_ds)
                if status is None:
                    raise self._lost(f"C-FIND for {what}")
                if status in _PENDING:
                    match = _study_match(identifier) if identifier is not None else None
                    if match is not None:
                        matches.setdefault(match.study_uid, match)
                elif status == 0x0000:
                    break
                else:
                    raise QueryFailed(f"PACS answered C-FIND for {what} with status 0x{status:04X}", status)
        return list(matches.values())

    @staticmethod
    def _study_query(**keys: str) -> Dataset:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        # Empty return keys ask the PACS to fill them in.
        for keyword in (
            "StudyInstanceUID",
            "AccessionNumber",
            "PatientID",
            "StudyDate",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances",
        ):
            setattr(query, keyword, keys.get(keyword, ""))
        return query

    def find_studies(self, accession: str) -> list[StudyMatch]:
        """All studies whose AccessionNumber is exactly `accession` (study-level C-FIND, Study Root).

        Raises `InvalidAccession` (a `ValueError`) before sending for blank or wildcard values. Results whose
        returned AccessionNumber differs (a PACS doing fuzzy matching) are dropped, so the match stays exact.
        """
        value = validate_accession(accession)
        found = self._find(self._study_query(AccessionNumber=value), f"accession {value!r}")
        return [m for m in found if m.accession is None or m.accession == value]

    def find_study(self, accession: str) -> StudyMatch:
        """The single study for `accession`; `StudyNotFound` if none, `AmbiguousAccession` if several."""
        matches = self.find_studies(accession)
        if not matches:
            raise StudyNotFound(f"no study with accession {accession.strip()!r} on PACS {self._where()}")
        if len(matches) > 1:
            raise AmbiguousAccession(accession.strip(), matches)
        return matches[0]

    def find_study_by_uid(self, study_uid: str) -> StudyMatch | None:
        """The study with this StudyInstanceUID, or None if the PACS does not hold it."""
        validate_uid(study_uid, "StudyInstanceUID")
        found = self._find(self._study_query(StudyInstanceUID=study_uid), f"study {study_uid}")
        return next((m for m in found if m.study_uid == study_uid), None)

    # ---------------------------------------------------------------- C-GET

    def _retrieve_contexts(self) -> tuple[list[PresentationContext], list[Any]]:
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
        contexts += [build_context(uid, list(TRANSFER_SYNTAXES)) for uid in self.storage_sop_classes]
        # With C-GET the PACS sends instances back on our association, so we must offer the SCP role.
        roles = [build_role(uid, scp_role=True) for uid in self.storage_sop_classes]
        return contexts, roles

    def retrieve(self, study_uid: str, dest: Path, *, sink: InstanceSink | None = None) -> RetrieveResult:
        """C-GET a whole study, writing each instance to `dest/<SOPInstanceUID>.dcm` (Part-10 files).

        Instances that do not belong to the study or whose SOPInstanceUID is not a UID are refused (counted
        as failed), so nothing can be written outside `dest`. Raises `StudyNotFound` when the PACS no longer
        holds the study, `RetrieveFailed` when it refuses or aborts the retrieve, `PacsUnavailable` when it
        cannot be reached. A partial retrieve (final status 0xB000) returns with `failed > 0`.

        With `sink`, each accepted instance goes to the sink as it arrives instead (nothing is written, and
        `dest` is not created): e.g. de-identified on the spot, so the original never touches the disk. Once
        the sink raises, that instance and every later one are refused, and its exception is raised when
        the C-GET is over.
        """
        validate_uid(study_uid, "StudyInstanceUID")
        dest = Path(dest)
        if sink is None:
            dest.mkdir(parents=True, exist_ok=True)
        received = _Received()

        def on_store(event: evt.Event) -> int:
            return self._store_received(event, study_uid, dest, received, sink)

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        contexts, roles = self._retrieve_contexts()
        final_status: int | None = None
        counts = {"completed": 0, "failed": 0, "warning": 0}
        lost = False
        with self._association(contexts, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            for status_ds, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                status = _status_of(status_ds)
                if status is None:
                    lost = True
                    break
                for key, keyword in (
                    ("completed", "NumberOfCompletedSuboperations"),
                    ("failed", "NumberOfFailedSuboperations"),
                    ("warning", "NumberOfWarningSuboperations"),
                ):
                    value = status_ds.get(keyword)
                    if value is not None:
                        counts[key] = int(value)
                if status not in _PENDING:
                    final_status = status
                    break

        if received.sink_error is not None:
            raise received.sink_error
        files = tuple(sorted(received.files.values()))
        result = RetrieveResult(
            study_uid=study_uid,
            dest=dest,
            received=len(files) + len(received.taken),
            # The PACS counts our refusals among its failed sub-operations; take whichever saw more.
            failed=max(counts["failed"], received.refused),
            warnings=counts["warning"],
            status=final_status,
            files=files,
        )
        if lost:
            raise RetrieveFailed(
                f"C-GET of study {study_uid}: PACS {self._where()} timed out or dropped the association "
                f"after {result.received} instances",
                None,
                result,
            )
        offered = counts["completed"] + counts["failed"] + counts["warning"] + received.refused
        if final_status is not None and final_status != 0x0000 and not (0xB000 <= final_status <= 0xBFFF):
            if result.received == 0 and offered == 0 and self._study_gone(study_uid):
                raise StudyNotFound(f"study {study_uid} is not on PACS {self._where()}", final_status)
            kind = "cancelled" if final_status == _CANCEL else "refused"
            raise RetrieveFailed(
                f"PACS {self._where()} {kind} C-GET of study {study_uid} (status 0x{final_status:04X})",
                final_status,
                result,
            )
        if result.received == 0:
            if offered == 0 and self._study_gone(study_uid):
                raise StudyNotFound(f"study {study_uid} is not on PACS {self._where()}", final_status)
            raise RetrieveFailed(
                f"C-GET of study {study_uid} delivered no instances ({result.failed} failed)", final_status, result
            )
        return result

    def _study_gone(self, study_uid: str) -> bool:
        """After a C-GET that matched nothing: does the PACS really not hold the study any more?"""
        try:
            return self.find_study_by_uid(study_uid) is None
        except (QueryFailed, PacsUnavailable):
            return False  # cannot tell; report the retrieve failure instead

    @staticmethod
    def _store_received(
        event: evt.Event, study_uid: str, dest: Path, received: _Received, sink: InstanceSink | None = None
    ) -> int:
        """C-STORE handler during a C-GET: validate, then write the instance atomically as a Part-10 file
        (or hand it to `sink`)."""
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        if not is_uid(sop_uid):
            logger.warning("refused an instance with a SOPInstanceUID that is not a UID: %r", sop_uid[:80])
            received.refused += 1
            return _STATUS_CANNOT_UNDERSTAND
        try:
            dataset = event.dataset
            their_study = str(dataset.get("StudyInstanceUID", ""))
        except Exception:  # a dataset pydicom cannot decode
            logger.warning("refused instance %s: undecodable dataset", sop_uid, exc_info=True)
            received.refused += 1
            return _STATUS_CANNOT_UNDERSTAND
        if their_study != study_uid:
            logger.warning("refused instance %s of study %r while retrieving %s", sop_uid, their_study, study_uid)
            received.refused += 1
            return _STATUS_CANNOT_UNDERSTAND
        if sink is not None:
            return PacsClient._hand_to_sink(event, dataset, sop_uid, received, sink)
        target = dest / f"{sop_uid}.dcm"
        partial = dest / f".{sop_uid}.{threading.get_ident()}.part"  # unique if two retrieves share dest
        try:
            partial.write_bytes(event.encoded_dataset(include_meta=True))
            os.replace(partial, target)  # readers never see half a file
        except OSError:
            logger.exception("could not write instance %s under %s", sop_uid, dest)
            partial.unlink(missing_ok=True)
            received.refused += 1
            return _STATUS_OUT_OF_RESOURCES
        received.files[sop_uid] = target
        return 0x0000

    @staticmethod
    def _hand_to_sink(event: evt.Event, dataset: Dataset, sop_uid: str, received: _Received, sink: InstanceSink) -> int:
        if received.sink_error is not None:
            received.refused += 1  # the study is lost already: the rest is not worth the work
            return _STATUS_CANNOT_UNDERSTAND
        dataset.file_meta = event.file_meta  # the transfer syntax it arrived in, its SOP class and instance
        try:
            sink(dataset)
        except Exception as exc:
            # The type only: a sink's message may quote the instance.
            logger.warning("instance %s refused by the sink (%s)", sop_uid, type(exc).__name__)
            received.sink_error = exc
            received.refused += 1
            return _STATUS_OUT_OF_RESOURCES if isinstance(exc, OSError) else _STATUS_CANNOT_UNDERSTAND
        received.taken.add(sop_uid)
        return 0x0000

    # ---------------------------------------------------------------- C-STORE

    def store(self, paths: Iterable[Path]) -> StoreResult:
        """C-STORE DICOM Part-10 files to the PACS (the seeding path); unreadable files become failures.

        Presentation contexts are proposed from each file's own SOP class and transfer syntax, in batches
        of at most 128 per association.
        """
        failures: list[StoreFailure] = []
        plan: list[tuple[Path, str, str]] = []
        for raw in paths:
            path = Path(raw)
            try:
                meta = read_file_meta_info(path)
                sop_class = str(meta.MediaStorageSOPClassUID)
                syntax = str(meta.TransferSyntaxUID)
            except (OSError, InvalidDicomError, AttributeError) as exc:
                failures.append(StoreFailure(path, f"not a readable DICOM Part-10 file: {exc}"))
                continue
            plan.append((path, sop_class, syntax))

        stored = 0
        for batch in _batches_by_context(plan):
            keys = sorted({(sop_class, syntax) for _, sop_class, syntax in batch})
            contexts = [build_context(sop_class, syntax) for sop_class, syntax in keys]
            with self._association(contexts) as assoc:
                for path, _, _ in batch:
                    try:
                        status = _status_of(assoc.send_c_store(path))
                    except (ValueError, AttributeError, OSError) as exc:
                        failures.append(StoreFailure(path, f"cannot send: {exc}"))
                        continue
                    if status is None:
                        raise self._lost(f"C-STORE of {path.name}")
                    if status in _STORE_OK:
                        stored += 1
                    else:
                        failures.append(StoreFailure(path, f"PACS refused it (status 0x{status:04X})", status))
        return StoreResult(stored=stored, failed=tuple(failures))

    def store_folder(self, folder: Path) -> int:
        """C-STORE every DICOM file under `folder`; return how many were stored.

        Raises `StoreFailed` (with the full `StoreResult`) if the PACS refused any of them.
        """
        result = self.store(iter_dicom_files(Path(folder)))
        if result.failed:
            first = result.failed[0]
            raise StoreFailed(
                f"{len(result.failed)} of {result.stored + len(result.failed)} instances were not stored "
                f"(first: {first.path.name}: {first.reason})",
                result,
            )
        return result.stored

    # ---------------------------------------------------------------- async wrappers

    async def _in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        # The blocking call keeps running if the awaiting task is cancelled; the timeouts bound it.
        if self._executor is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def echo_async(self) -> float:
        """`echo` in a worker thread."""
        return await self._in_thread(self.echo)

    async def find_studies_async(self, accession: str) -> list[StudyMatch]:
        """`find_studies` in a worker thread."""
        return await self._in_thread(self.find_studies, accession)

    async def find_study_async(self, accession: str) -> StudyMatch:
        """`find_study` in a worker thread."""
        return await self._in_thread(self.find_study, accession)

    async def retrieve_async(self, study_uid: str, dest: Path) -> RetrieveResult:
        """`retrieve` in a worker thread."""
        return await self._in_thread(self.retrieve, study_uid, dest)

    async def store_async(self, paths: Iterable[Path]) -> StoreResult:
        """`store` in a worker thread (`paths` is materialised first)."""
        return await self._in_thread(self.store, list(paths))


def _batches_by_context(plan: list[tuple[Path, str, str]]) -> Iterator[list[tuple[Path, str, str]]]:
    """Split files into batches whose distinct (SOP class, transfer syntax) pairs fit one association."""
    batch: list[tuple[Path, str, str]] = []
    keys: set[tuple[str, str]] = set()
    for item in plan:
        key = (item[1], item[2])
        if key not in keys and len(keys) == _MAX_CONTEXTS:
            yield batch
            batch, keys = [], set()
        keys.add(key)
        batch.append(item)
    if batch:
        yield batch
