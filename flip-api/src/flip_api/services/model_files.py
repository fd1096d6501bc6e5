"""A model's files: upload into quarantine, scan, promote or block; list, download, delete.

Every upload lands in quarantine in the object store first (``quarantine/<model>/<file>``), with its row
SCANNING. The scan (:mod:`flip_api.services.file_scan`) then settles it: CLEAN files are copied to their
promoted key (``models/<model>/<file>``) and the quarantined bytes removed; BLOCKED files are deleted, their
row kept with the findings so the uploader sees why. Only CLEAN files are ever downloaded or bundled.
When a file becomes CLEAN, every other row of the same name goes (the newest clean upload wins).

Two ways in: through the hub (``PUT`` of the bytes, streamed to a temporary file with the size cap
enforced as they arrive), or, when the object store is S3, straight to the bucket with a presigned POST
whose policy carries the size cap, followed by ``complete``. A hub that dies mid-scan leaves a row
SCANNING; the worker's sweep rescans it from quarantine once ``FLIP_SCAN_STUCK_S`` has passed, and drops
presigned uploads that never arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import ApiError, Conflict, NotFound
from flip_api.core.state import HubState
from flip_api.db.models import FileStatus, ModelFile
from flip_api.db.session import transaction
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.file_scan import FileRejected, Finding, ScanResult, ScanVerdict, check_file_name, scan_file
from flip_api.services.models import MODEL_SUBJECT, get_model, model_for_change
from flip_api.services.rbac import Principal
from flip_api.storage import ObjectNotFound, ObjectTooLarge, PresignedUpload, StoredObject

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "file_too_large"


class FileBlocked(ApiError):
    status_code = 422
    code = "file_blocked"


def quarantine_key(model_id: uuid.UUID, file_id: uuid.UUID) -> str:
    return f"quarantine/{model_id}/{file_id}"


def promoted_key(model_id: uuid.UUID, file_id: uuid.UUID) -> str:
    return f"models/{model_id}/{file_id}"


def _now() -> datetime:
    return datetime.now(UTC)


def file_not_found() -> NotFound:
    return NotFound("file not found", code="file_not_found")


def _rejected(exc: FileRejected) -> ApiError:
    return ApiError(exc.detail, code=exc.code)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"file is larger than this hub accepts ({limit} bytes)")


# --------------------------------------------------------------------------------------------- reading


async def list_files(db: AsyncSession, principal: Principal, model_id: uuid.UUID) -> list[ModelFile]:
    model, _ = await get_model(db, principal, model_id)
    rows = await db.scalars(
        select(ModelFile).where(ModelFile.model_id == model.id).order_by(ModelFile.name, ModelFile.created_at)
    )
    return list(rows.all())


async def get_file(db: AsyncSession, principal: Principal, model_id: uuid.UUID, file_id: uuid.UUID) -> ModelFile:
    model, _ = await get_model(db, principal, model_id)
    row = await db.scalar(select(ModelFile).where(ModelFile.id == file_id, ModelFile.model_id == model.id))
    if row is None:
        raise file_not_found()
    return row


async def clean_file(db: AsyncSession, principal: Principal, model_id: uuid.UUID, file_id: uuid.UUID) -> ModelFile:
    """A file that may be downloaded: CLEAN only (409 ``file_not_clean`` otherwise)."""
    row = await get_file(db, principal, model_id, file_id)
    if row.status is not FileStatus.CLEAN or row.object_key is None:
        raise Conflict(f"file is {row.status.value}: only clean files can be downloaded", code="file_not_clean")
    return row


# --------------------------------------------------------------------------------------------- uploading


async def _file_for_change(
    db: AsyncSession, principal: Principal, model_id: uuid.UUID, file_id: uuid.UUID
) -> ModelFile:
    """Lock a file of a model the caller may change (and that is editable)."""
    model, _ = await model_for_change(db, principal, model_id)
    row = await db.scalar(
        select(ModelFile).where(ModelFile.id == file_id, ModelFile.model_id == model.id).with_for_update()
    )
    if row is None:
        raise file_not_found()
    return row


async def _new_row(
    hub: HubState, principal: Principal, model_id: uuid.UUID, raw_name: str, status: FileStatus
) -> ModelFile:
    """Check the name and that the model may change, and record the upload (its own transaction)."""
    try:
        name = check_file_name(raw_name)
    except FileRejected as exc:
        raise _rejected(exc) from exc
    async with transaction(hub.sessions) as db:
        model, _ = await model_for_change(db, principal, model_id)
        now = _now()
        row = ModelFile(
            id=uuid.uuid4(),
            model_id=model.id,
            name=name,
            status=status,
            findings=[],
            advisory=False,
            uploaded_by=principal.id,
            scan_started_at=now if status is FileStatus.SCANNING else None,
            upload_expires_at=(
                now + timedelta(seconds=hub.settings.presign_ttl_s) if status is FileStatus.UPLOADING else None
            ),
        )
        row.object_key = quarantine_key(model.id, row.id)
        db.add(row)
    return row


async def _drop_row(hub: HubState, file_id: uuid.UUID) -> None:
    async with transaction(hub.sessions) as db:
        await db.execute(delete(ModelFile).where(ModelFile.id == file_id))


async def upload(
    hub: HubState,
    principal: Principal,
    model_id: uuid.UUID,
    name: str,
    body: AsyncIterator[bytes],
    *,
    declared_size: int | None,
) -> ModelFile:
    """Take a file's bytes through the hub: quarantine, scan, settle. Raises :class:`FileBlocked` (422) when
    the scan refuses it (the row stays, BLOCKED, with the findings)."""
    limit = hub.settings.upload_max_bytes
    if declared_size is not None and declared_size > limit:
        raise _too_large(limit)
    row = await _new_row(hub, principal, model_id, name, FileStatus.SCANNING)
    key = row.object_key
    assert key is not None
    with tempfile.TemporaryDirectory(prefix="flip-upload-") as tmp:
        path = Path(tmp) / "upload"
        try:
            await _spool(body, path, limit)
            stored = await asyncio.to_thread(hub.objects.put_file, key, path, max_bytes=limit)
        except BaseException as exc:
            await _drop_row(hub, row.id)
            if isinstance(exc, ObjectTooLarge):
                raise _too_large(limit) from exc
            raise
        verdict = await asyncio.to_thread(scan_file, path, row.name)
    return await settle(hub, row.id, verdict, stored, actor=Actor.user(principal.id))


async def _spool(body: AsyncIterator[bytes], path: Path, limit: int) -> None:
    """Write the request body to ``path``, refusing it as soon as it passes ``limit`` bytes."""
    size = 0
    with path.open("wb") as out:
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.write(chunk)


async def presigned_upload(
    hub: HubState, principal: Principal, model_id: uuid.UUID, name: str, size: int
) -> tuple[ModelFile, PresignedUpload]:
    """Start an upload straight to the object store (S3): a presigned POST valid for ``FLIP_PRESIGN_TTL_S``
    whose policy caps the size; ``complete`` then scans what arrived."""
    limit = hub.settings.upload_max_bytes
    if size > limit:
        raise _too_large(limit)
    row = await _new_row(hub, principal, model_id, name, FileStatus.UPLOADING)
    assert row.object_key is not None
    grant = hub.objects.presigned_upload(row.object_key, max_bytes=limit, ttl_s=hub.settings.presign_ttl_s)
    if grant is None:
        await _drop_row(hub, row.id)
        raise Conflict(
            "this hub's object store takes uploads through the hub only: PUT the file to "
            f"/api/models/{model_id}/files/{row.name}",
            code="presigned_upload_unavailable",
        )
    return row, grant


async def complete_upload(hub: HubState, principal: Principal, model_id: uuid.UUID, file_id: uuid.UUID) -> ModelFile:
    """After a presigned upload: scan what arrived in quarantine and settle it."""
    async with transaction(hub.sessions) as db:
        row = await _file_for_change(db, principal, model_id, file_id)
        if row.status is not FileStatus.UPLOADING:
            raise Conflict(f"file is {row.status.value}, not waiting for its upload", code="file_not_uploading")
        if await asyncio.to_thread(hub.objects.stat, row.object_key or "") is None:
            raise Conflict("nothing has been uploaded for this file yet", code="upload_missing")
        row.status, row.scan_started_at = FileStatus.SCANNING, _now()
    return await rescan(hub, file_id, actor=Actor.user(principal.id))


async def rescan(hub: HubState, file_id: uuid.UUID, *, actor: Actor) -> ModelFile:
    """Scan a SCANNING file from quarantine and settle it (``complete`` and the worker's sweep)."""
    async with hub.sessions() as db:
        row = await db.get(ModelFile, file_id)
        key = row.object_key if row is not None else None
    if row is None or key is None:
        raise file_not_found()
    with tempfile.TemporaryDirectory(prefix="flip-scan-") as tmp:
        path = Path(tmp) / "upload"
        try:
            stored: StoredObject | None = await asyncio.to_thread(hub.objects.download_to, key, path)
        except ObjectNotFound:
            stored = None
        limit = hub.settings.upload_max_bytes
        if stored is None:
            verdict = _blocked("the uploaded bytes were lost before they could be scanned")
        elif stored.size > limit:  # the presigned policy caps the size; checked again all the same
            verdict = _blocked(f"file is larger than this hub accepts ({limit} bytes)")
        else:
            verdict = await asyncio.to_thread(scan_file, path, row.name)
    return await settle(hub, file_id, verdict, stored, actor=actor)


def _blocked(message: str) -> ScanResult:
    return ScanResult(ScanVerdict.BLOCKED, (Finding("flip", "dangerous", message),), advisory=False)


async def settle(
    hub: HubState, file_id: uuid.UUID, verdict: ScanResult, stored: StoredObject | None, *, actor: Actor
) -> ModelFile:
    """Apply a scan verdict to a SCANNING file (``stored``: the size and sha256 of the bytes scanned): promote
    it, or block it and delete its bytes.

    Idempotent: a file another scan already settled is returned as it is.
    """
    superseded: list[str] = []
    async with transaction(hub.sessions) as db:
        row = await db.scalar(select(ModelFile).where(ModelFile.id == file_id).with_for_update())
        if row is None:
            raise file_not_found()
        if row.status is not FileStatus.SCANNING:
            return row
        quarantined = row.object_key
        row.findings = [dataclasses.asdict(f) for f in verdict.findings]
        row.size = stored.size if stored is not None else None
        row.sha256 = stored.sha256 if stored is not None else None
        row.advisory = verdict.advisory
        row.scanned_at = _now()
        if verdict.verdict is ScanVerdict.CLEAN and quarantined is not None:
            target = promoted_key(row.model_id, row.id)
            await asyncio.to_thread(hub.objects.copy, quarantined, target)
            row.status, row.object_key = FileStatus.CLEAN, target
            others = await db.scalars(
                select(ModelFile).where(
                    ModelFile.model_id == row.model_id, ModelFile.name == row.name, ModelFile.id != row.id
                )
            )
            for other in others.all():
                if other.object_key is not None:
                    superseded.append(other.object_key)
                await db.delete(other)
        else:
            row.status, row.object_key = FileStatus.BLOCKED, None
        await audit.record(
            db,
            actor,
            "model.file_uploaded" if row.status is FileStatus.CLEAN else "model.file_blocked",
            MODEL_SUBJECT,
            row.model_id,
            {"file_id": str(row.id), "name": row.name, "sha256": row.sha256, "findings": len(row.findings)},
        )
    # The bytes go once the rows that point at them are gone (a failure here only leaves garbage).
    for key in [k for k in (quarantined, *superseded) if k is not None]:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(hub.objects.delete, key)
    if row.status is FileStatus.BLOCKED:
        raise FileBlocked(f"{row.name} was blocked by the upload scan and deleted: {_summary(row)}")
    return row


def _summary(row: ModelFile) -> str:
    messages = [str(f.get("message", "")) for f in row.findings if f.get("severity") in ("dangerous", "high", "error")]
    messages = messages or [str(f.get("message", "")) for f in row.findings]
    return "; ".join(messages[:3]) or "refused"


async def delete_file(hub: HubState, principal: Principal, model_id: uuid.UUID, file_id: uuid.UUID) -> None:
    """Remove a file (any state) of an editable model, and its bytes."""
    async with transaction(hub.sessions) as db:
        row = await _file_for_change(db, principal, model_id, file_id)
        key = row.object_key
        await db.delete(row)
        await audit.record(
            db,
            Actor.user(principal.id),
            "model.file_deleted",
            MODEL_SUBJECT,
            row.model_id,
            {"file_id": str(file_id), "name": row.name},
        )
    if key is not None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(hub.objects.delete, key)


# --------------------------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class SweepReport:
    rescanned: int = 0  # files scanned by the sweep (stuck scans, and presigned uploads never completed)
    expired: int = 0  # presigned uploads dropped because nothing arrived before they expired


async def sweep(hub: HubState, *, now: datetime | None = None) -> SweepReport:
    """Worker: rescan files stuck SCANNING past ``FLIP_SCAN_STUCK_S``; settle or drop presigned uploads that
    were never completed (scanned if their bytes arrived, dropped if not)."""
    now = now or _now()
    stuck_before = now - timedelta(seconds=hub.settings.scan_stuck_s)
    async with transaction(hub.sessions) as db:
        stuck = list(
            (
                await db.scalars(
                    select(ModelFile)
                    .where(ModelFile.status == FileStatus.SCANNING, ModelFile.scan_started_at < stuck_before)
                    .with_for_update(skip_locked=True)
                    .limit(20)
                )
            ).all()
        )
        expired = list(
            (
                await db.scalars(
                    select(ModelFile)
                    .where(ModelFile.status == FileStatus.UPLOADING, ModelFile.upload_expires_at < now)
                    .with_for_update(skip_locked=True)
                    .limit(20)
                )
            ).all()
        )
        for row in stuck:
            row.scan_started_at = now  # claimed: the next sweep leaves it alone for another FLIP_SCAN_STUCK_S
        for row in expired:
            row.status, row.scan_started_at = FileStatus.SCANNING, now
    for row in stuck:
        with contextlib.suppress(FileBlocked):
            await rescan(hub, row.id, actor=Actor.system("worker"))
    dropped = 0
    for row in expired:
        if await asyncio.to_thread(hub.objects.stat, row.object_key or "") is None:
            await _drop_row(hub, row.id)  # abandoned: nothing was ever uploaded
            dropped += 1
            continue
        with contextlib.suppress(FileBlocked):
            await rescan(hub, row.id, actor=Actor.system("worker"))
    return SweepReport(rescanned=len(stuck) + len(expired) - dropped, expired=dropped)
