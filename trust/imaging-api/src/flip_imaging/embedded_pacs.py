"""The embedded default PACS: pynetdicom's own Query/Retrieve and Storage SCP, on loopback only.

Used by the demo and the tests where no hospital PACS exists. It speaks the same DICOM a clinical PACS does,
so `PacsClient` cannot tell the difference: C-ECHO, C-STORE (anything can seed it), C-FIND at STUDY level in
the Study Root model with exact matching on AccessionNumber / StudyInstanceUID / PatientID, and C-GET of a
whole study. Instances live as Part-10 files under `<storage>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`, and a
SQLite index (`<storage>/index.sqlite3`) maps UIDs, accession and patient ids to them; both survive restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from flip_imaging.pacs import (
    DEFAULT_MAX_PDU,
    TRANSFER_SYNTAXES,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
    disable_nagle,
    is_uid,
    quiet_protocol_logging,
)

__all__ = ["EmbeddedPacs", "IndexedInstance"]

logger = logging.getLogger(__name__)

# The embedded PACS never listens beyond this machine.
LOOPBACK = "127.0.0.1"

# Statuses, PS3.4 Annex B/C.
_SUCCESS = 0x0000
_PENDING = 0xFF00
_CANCEL = 0xFE00
_STORE_OUT_OF_RESOURCES = 0xA700
_STORE_CANNOT_UNDERSTAND = 0xC000
_IDENTIFIER_MISMATCH = 0xA900  # "identifier does not match SOP class": e.g. an unsupported level
_UNABLE_TO_PROCESS = 0xC001

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid      TEXT PRIMARY KEY,
    sop_class    TEXT NOT NULL,
    series_uid   TEXT NOT NULL,
    study_uid    TEXT NOT NULL,
    accession    TEXT NOT NULL DEFAULT '',
    patient_id   TEXT NOT NULL DEFAULT '',
    study_date   TEXT NOT NULL DEFAULT '',
    modality     TEXT NOT NULL DEFAULT '',
    path         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE INDEX IF NOT EXISTS instances_accession ON instances (accession);
CREATE INDEX IF NOT EXISTS instances_patient ON instances (patient_id);
"""

# Study-level attributes we can answer in a C-FIND response.
_STUDY_KEYS = (
    "StudyInstanceUID",
    "AccessionNumber",
    "PatientID",
    "StudyDate",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)


@dataclass(frozen=True, slots=True)
class IndexedInstance:
    """One row of the index."""

    sop_uid: str
    sop_class: str
    series_uid: str
    study_uid: str
    accession: str
    patient_id: str
    study_date: str
    modality: str
    path: Path


def _clean(value: object) -> str:
    return "" if value is None else str(value).strip()


class EmbeddedPacs:
    """A small DICOM Q/R + Storage SCP on 127.0.0.1 for demos and tests.

    `port=0` picks a free port, readable as `.port` after `start()`. `allowed_calling_aes`, when given,
    refuses associations from any other calling AE title (like a PACS's list of known modalities).
    Handlers run on pynetdicom's per-association threads; the index is guarded by one lock.
    """

    def __init__(
        self,
        storage_dir: Path,
        *,
        ae_title: str = "FLIP_PACS",
        port: int = 0,
        allowed_calling_aes: Sequence[str] | None = None,
        max_associations: int = 16,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.ae_title = ae_title
        self._requested_port = port
        self._allowed_calling_aes = list(allowed_calling_aes) if allowed_calling_aes else None
        self._max_associations = max_associations
        self._lock = threading.Lock()  # guards the index connection
        self._lifecycle = threading.Lock()  # serialises start() / stop()
        self._db: sqlite3.Connection | None = None
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._port: int | None = None
        AE(ae_title=ae_title)  # validate the title now

    # ---------------------------------------------------------------- lifecycle

    @property
    def host(self) -> str:
        """The address it listens on: always loopback."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The TCP port it listens on (the chosen one when created with port 0)."""
        if self._port is None:
            raise RuntimeError("EmbeddedPacs is not running")
        return self._port

    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._server is not None

    def start(self) -> EmbeddedPacs:
        """Open the index and start listening; returns self. Idempotent."""
        with self._lifecycle:
            if self._server is None:
                self._start()
        return self

    def _start(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.storage_dir / "index.sqlite3", check_same_thread=False, isolation_level=None)
        db.executescript(_SCHEMA)
        self._db = db

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # a PACS answers only to its own AE title
        if self._allowed_calling_aes:
            ae.require_calling_aet = self._allowed_calling_aes
        ae.maximum_associations = self._max_associations
        ae.maximum_pdu_size = DEFAULT_MAX_PDU  # what we accept; seeding by C-STORE sends slices whole
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is None:
                continue
            # scp_role=True accepts a C-GET requestor's offer to act as Storage SCP, so we can send the
            # instances back on its association; plain C-STORE (no role item) works either way.
            ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES), scu_role=True, scp_role=True)
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, disable_nagle),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
        ]
        quiet_protocol_logging()
        try:
            server = ae.start_server((LOOPBACK, self._requested_port), block=False, evt_handlers=handlers)
        except OSError:
            db.close()
            self._db = None
            raise
        assert server is not None  # non-blocking start_server always returns the server
        self._server = server
        self._ae = ae
        self._port = int(server.server_address[1])
        logger.info("embedded PACS %s listening on %s:%d", self.ae_title, LOOPBACK, self._port)

    def stop(self) -> None:
        """Stop listening, abort open associations and close the index. Idempotent."""
        with self._lifecycle:
            self._stop()

    def _stop(self) -> None:
        ae = self._ae
        self._server = None
        self._ae = None
        self._port = None
        if ae is not None:
            ae.shutdown()  # aborts open associations, then stops and closes the listening socket
        with self._lock:  # a handler still finishing sees either the open index or None, never a closed one
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> EmbeddedPacs:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- index

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._db is None:
                raise RuntimeError("EmbeddedPacs is not running")
            return list(self._db.execute(sql, params).fetchall())

    def instances(self, study_uid: str | None = None) -> list[IndexedInstance]:
        """Indexed instances, of one study or all, ordered by study, series and SOP UID."""
        sql = "SELECT sop_uid, sop_class, series_uid, study_uid, accession, patient_id, study_date, modality, path"
        sql += " FROM instances"
        params: tuple[str, ...] = ()
        if study_uid is not None:
            sql += " WHERE study_uid = ?"
            params = (study_uid,)
        rows = self._query(sql + " ORDER BY study_uid, series_uid, sop_uid", params)
        return [
            IndexedInstance(
                sop_uid=row[0],
                sop_class=row[1],
                series_uid=row[2],
                study_uid=row[3],
                accession=row[4],
                patient_id=row[5],
                study_date=row[6],
                modality=row[7],
                path=Path(row[8]),
            )
            for row in rows
        ]

    def delete_study(self, study_uid: str) -> int:
        """Remove a study's instances from the index and disk; return how many were removed."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("EmbeddedPacs is not running")
            rows = self._db.execute("SELECT path FROM instances WHERE study_uid = ?", (study_uid,)).fetchall()
            self._db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
        for (path,) in rows:
            Path(path).unlink(missing_ok=True)
        if is_uid(study_uid):
            with contextlib.suppress(OSError):  # not empty (a concurrent store) or already gone
                (self.storage_dir / study_uid).rmdir()
        return len(rows)

    # ---------------------------------------------------------------- C-STORE

    def _on_store(self, event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        try:
            ds = event.dataset
            sop_uid = _clean(ds.get("SOPInstanceUID"))
            study_uid = _clean(ds.get("StudyInstanceUID"))
            series_uid = _clean(ds.get("SeriesInstanceUID"))
            row = (
                sop_uid,
                _clean(ds.get("SOPClassUID")) or _clean(request.AffectedSOPClassUID),
                series_uid,
                study_uid,
                _clean(ds.get("AccessionNumber")),
                _clean(ds.get("PatientID")),
                _clean(ds.get("StudyDate")),
                _clean(ds.get("Modality")),
            )
        except Exception:
            logger.warning("refused an undecodable instance", exc_info=True)
            return _STORE_CANNOT_UNDERSTAND
        # The UIDs become directory and file names, so they must be UIDs and nothing else.
        if not (is_uid(sop_uid) and is_uid(study_uid) and is_uid(series_uid)):
            logger.warning("refused an instance with missing or malformed UIDs (SOP %r)", sop_uid[:80])
            return _STORE_CANNOT_UNDERSTAND
        if sop_uid != _clean(request.AffectedSOPInstanceUID):
            return _STORE_CANNOT_UNDERSTAND
        folder = self.storage_dir / study_uid
        target = folder / f"{sop_uid}.dcm"
        partial = folder / f".{sop_uid}.{threading.get_ident()}.part"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(event.encoded_dataset(include_meta=True))
            os.replace(partial, target)
        except OSError:
            logger.exception("could not store instance %s", sop_uid)
            partial.unlink(missing_ok=True)
            return _STORE_OUT_OF_RESOURCES
        with self._lock:
            if self._db is None:
                return _STORE_OUT_OF_RESOURCES
            previous = self._db.execute("SELECT path FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
            self._db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, str(target)))
        if previous and previous[0] != str(target):
            Path(previous[0]).unlink(missing_ok=True)  # re-sent under another study: drop the stale copy
        return _SUCCESS

    # ---------------------------------------------------------------- C-FIND

    def _matching_studies(self, identifier: Dataset) -> list[dict[str, Any]]:
        """Studies matching the identifier's non-empty keys exactly (wildcards are not interpreted)."""
        where: list[str] = []
        params: list[str] = []
        for keyword, column in (("AccessionNumber", "accession"), ("PatientID", "patient_id")):
            value = _clean(identifier.get(keyword))
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        uids = identifier.get("StudyInstanceUID")
        if uids not in (None, ""):
            # UI matching allows a list of UIDs (PS3.4 C.2.2.2.2).
            values = [str(uids)] if isinstance(uids, str) else [str(u) for u in uids]
            where.append(f"study_uid IN ({', '.join('?' * len(values))})")
            params.extend(v.strip() for v in values)
        sql = (
            "SELECT study_uid, MAX(accession), MAX(patient_id), MAX(study_date), "
            "GROUP_CONCAT(DISTINCT modality), COUNT(DISTINCT series_uid), COUNT(*) FROM instances"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY study_uid ORDER BY study_uid"
        studies = []
        for study_uid, accession, patient_id, study_date, modalities, n_series, n_instances in self._query(sql, params):
            studies.append(
                {
                    "StudyInstanceUID": study_uid,
                    "AccessionNumber": accession,
                    "PatientID": patient_id,
                    "StudyDate": study_date,
                    "ModalitiesInStudy": sorted(m for m in (modalities or "").split(",") if m),
                    "NumberOfStudyRelatedSeries": n_series,
                    "NumberOfStudyRelatedInstances": n_instances,
                }
            )
        return studies

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier
        if _clean(identifier.get("QueryRetrieveLevel")) != "STUDY":
            yield _IDENTIFIER_MISMATCH, None  # only STUDY level is supported
            return
        try:
            studies = self._matching_studies(identifier)
        except Exception:
            logger.exception("C-FIND failed")
            yield _UNABLE_TO_PROCESS, None
            return
        for study in studies:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            response = Dataset()
            response.QueryRetrieveLevel = "STUDY"
            if "SpecificCharacterSet" in identifier:
                response.SpecificCharacterSet = identifier.SpecificCharacterSet
            # Return every requested key; the ones we do not index come back empty, as PS3.4 C.2.2.1.3 asks.
            for element in identifier:
                if element.keyword and element.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet"):
                    value = study.get(element.keyword, "")
                    setattr(response, element.keyword, value if value != [] else "")
            yield _PENDING, response

    # ---------------------------------------------------------------- C-GET

    def _on_get(self, event: evt.Event) -> Iterator[int | tuple[int, Dataset | None]]:
        identifier = event.identifier
        study_uid = _clean(identifier.get("StudyInstanceUID"))
        if _clean(identifier.get("QueryRetrieveLevel")) != "STUDY" or not is_uid(study_uid):
            # pynetdicom needs a positive sub-operation count before it relays a failure status.
            yield 1
            yield _IDENTIFIER_MISMATCH, None
            return
        paths = [instance.path for instance in self.instances(study_uid)]
        yield len(paths)  # zero: success with no sub-operations, what a PACS answers for an unknown study
        for path in paths:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            try:
                dataset = dcmread(path)  # one at a time, so a big study is never all in memory
            except (OSError, ValueError):
                # Deleted or damaged since the lookup: stop with a failure the client can report.
                logger.warning("instance %s of study %s vanished during C-GET", path.name, study_uid)
                yield _UNABLE_TO_PROCESS, None
                return
            yield _PENDING, dataset
