"""The hub's object store: model files and other uploads, on local disk or in an S3 bucket.

The interface is synchronous (boto3 is); async callers wrap each call in ``asyncio.to_thread``.  Every
write is atomic: a reader sees the whole object or none of it.  Sizes are enforced while the bytes
stream in, so an oversized upload is refused without ever being stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISREG
from typing import IO, TYPE_CHECKING, TypeVar
from urllib.parse import quote

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.response import StreamingBody

from flip_api.core.config import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

    from flip_api.core.config import HubSettings

_T = TypeVar("_T")

MAX_KEY_LENGTH = 512
MAX_SEGMENT_LENGTH = 255  # a file name's limit on common file systems
CHUNK_SIZE = 1 << 20
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# Uploads smaller than this are spooled in memory before they go to S3, larger ones to a temp file.
_SPOOL_IN_MEMORY_BYTES = 8 << 20


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str  # hex digest of the bytes


@dataclass(frozen=True)
class PresignedUpload:
    """An HTML-form style POST straight to the store: send ``fields`` plus the file as ``file``.

    The store enforces the size cap and the expiry itself, from the signed policy inside ``fields``.
    """

    url: str
    fields: dict[str, str]
    expires_at: datetime


class ObjectStoreError(Exception):
    """The object store failed; the message is safe to show (no endpoints, no credentials)."""


class ObjectNotFound(ObjectStoreError):
    pass


class ObjectTooLarge(ObjectStoreError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the file is larger than the limit of {max_bytes} bytes")
        self.max_bytes = max_bytes


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative ``/``-separated path of safe segments; raise ValueError if not.

    Segments use letters, digits, ``.``, ``_`` and ``-`` only, are at most 255 characters and may not be
    empty, ``.`` or ``..``, so a key can never escape the local root or mean two different objects.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key must be 1-{MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or len(segment) > MAX_SEGMENT_LENGTH or not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"invalid object key {key!r}: each segment is 1-{MAX_SEGMENT_LENGTH} letters, digits, '.', '_' or '-'"
                " and never '.' or '..'"
            )
    return key


class ObjectStore(ABC):
    """Where the hub keeps uploaded files, addressed by keys (see :func:`validate_key`)."""

    @abstractmethod
    def put_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int) -> StoredObject:
        """Store the bytes of ``chunks`` under ``key`` atomically, hashing them on the way.

        Raises ObjectTooLarge as soon as more than ``max_bytes`` arrive; nothing is stored then.
        """

    def put_file(self, key: str, path: Path, *, max_bytes: int) -> StoredObject:
        """Store the local file ``path`` under ``key`` (same rules as :meth:`put_stream`)."""
        if path.stat().st_size > max_bytes:
            raise ObjectTooLarge(max_bytes)
        with path.open("rb") as fh:
            return self.put_stream(key, _read_chunks(fh, CHUNK_SIZE), max_bytes=max_bytes)

    @abstractmethod
    def download_to(self, key: str, path: Path) -> StoredObject:
        """Copy the object to the local file ``path`` (for scanning) and return its size and hash."""

    @abstractmethod
    def open_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Open the object now (ObjectNotFound is raised here, not on first read) and iterate its bytes."""

    @abstractmethod
    def stat(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is no such object."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy object ``src`` to ``dst`` (replacing ``dst``); ObjectNotFound if ``src`` is absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object; deleting an absent object is not an error."""

    def presigned_upload(self, key: str, *, max_bytes: int, ttl_s: int) -> PresignedUpload | None:
        """A short-lived direct upload to ``key``, or None when this store takes uploads through the hub."""
        return None

    def presigned_download(self, key: str, *, ttl_s: int, filename: str) -> str | None:
        """A short-lived direct download URL, or None when downloads stream through the hub."""
        return None


def object_store_from_settings(settings: HubSettings) -> ObjectStore:
    """The object store the settings describe (``FLIP_OBJECT_STORE``)."""
    if settings.object_store == "s3":
        if settings.s3_bucket is None:  # the settings' own validator refuses this; kept for type narrowing
            raise ConfigError("FLIP_OBJECT_STORE=s3 requires FLIP_S3_BUCKET to be set")
        try:
            return S3ObjectStore(
                settings.s3_bucket,
                prefix=settings.s3_prefix,
                region=settings.s3_region,
                endpoint_url=settings.s3_endpoint_url,
            )
        except ValueError as exc:
            raise ConfigError(f"FLIP_S3_PREFIX is invalid: {exc}") from exc
    return LocalObjectStore(settings.object_store_dir)


# ---------------------------------------------------------------------------------------------------
# Local disk
# ---------------------------------------------------------------------------------------------------


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; the embedded default.  Downloads stream through the hub."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int) -> StoredObject:
        digest, size = _write_atomically(self._path(key), key, lambda fh: _write_hashed(chunks, fh, max_bytes))
        return StoredObject(key, size, digest)

    def download_to(self, key: str, path: Path) -> StoredObject:
        with self._open(key) as src, path.open("wb") as dst:
            digest, size = _write_hashed(_read_chunks(src, CHUNK_SIZE), dst, None)
        return StoredObject(key, size, digest)

    def open_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        return _closing_chunks(self._open(key), chunk_size)

    def stat(self, key: str) -> int | None:
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info.st_size if S_ISREG(info.st_mode) else None

    def copy(self, src: str, dst: str) -> None:
        target = self._path(dst)
        with self._open(src) as source:
            _write_atomically(target, dst, lambda fh: shutil.copyfileobj(source, fh, CHUNK_SIZE))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    def _open(self, key: str) -> IO[bytes]:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key}") from None
        except OSError as exc:
            raise ObjectStoreError(f"could not read object {key}") from exc


def _write_atomically(target: Path, key: str, write: Callable[[IO[bytes]], _T]) -> _T:
    """Run ``write`` on a temp file beside ``target``, then rename it into place (atomic on POSIX).

    The temp file is removed whatever ``write`` raises, so a refused or failed write leaves nothing.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise ObjectStoreError(f"could not store object {key}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            # Errors of the source (a dropped client, an unreadable input) propagate unchanged.
            result = write(fh)
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise ObjectStoreError(f"could not store object {key}") from exc
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise ObjectStoreError(f"could not store object {key}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------------------------------------------
# S3 (and S3-compatible stores)
# ---------------------------------------------------------------------------------------------------


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket under ``prefix``; uploads and downloads may go straight to S3, presigned."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        client: S3Client | None = None,
    ) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = validate_key(prefix) + "/" if prefix else ""
        if client is None:
            config = Config(
                signature_version="s3v4",
                connect_timeout=10,
                read_timeout=60,
                retries={"max_attempts": 5, "mode": "standard"},
                # S3-compatible stores (MinIO, Ceph, test servers) rarely serve bucket subdomains.
                s3={"addressing_style": "path"} if endpoint_url else {},
            )
            client = boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)
        self.client = client

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int) -> StoredObject:
        full_key = self._key(key)
        # Spool first: the cap and the hash are settled before anything reaches the bucket, and a
        # single upload (multipart for big files) makes the object appear whole or not at all.
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES) as spool:
            digest, size = _write_hashed(chunks, spool, max_bytes)
            spool.seek(0)
            with _s3_errors(key):
                self.client.upload_fileobj(spool, self.bucket, full_key)
        return StoredObject(key, size, digest)

    def put_file(self, key: str, path: Path, *, max_bytes: int) -> StoredObject:
        full_key = self._key(key)
        with path.open("rb") as fh:
            digest, size = _write_hashed(_read_chunks(fh, CHUNK_SIZE), None, max_bytes)
        with _s3_errors(key):
            self.client.upload_file(str(path), self.bucket, full_key)
        return StoredObject(key, size, digest)

    def download_to(self, key: str, path: Path) -> StoredObject:
        with _s3_errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                with path.open("wb") as dst:
                    digest, size = _write_hashed(body.iter_chunks(CHUNK_SIZE), dst, None)
            finally:
                body.close()
        return StoredObject(key, size, digest)

    def open_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with _s3_errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        return self._body_chunks(key, body, chunk_size)

    @staticmethod
    def _body_chunks(key: str, body: StreamingBody, chunk_size: int) -> Iterator[bytes]:
        try:
            with _s3_errors(key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def stat(self, key: str) -> int | None:
        try:
            with _s3_errors(key):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return None
        return head["ContentLength"]

    def copy(self, src: str, dst: str) -> None:
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": self._key(src)}
        with _s3_errors(src):
            self.client.copy(source, self.bucket, self._key(dst))

    def delete(self, key: str) -> None:
        with _s3_errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def presigned_upload(self, key: str, *, max_bytes: int, ttl_s: int) -> PresignedUpload:
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
        with _s3_errors(key):
            post = self.client.generate_presigned_post(
                Bucket=self.bucket,
                Key=self._key(key),
                Conditions=[["content-length-range", 0, max_bytes]],
                ExpiresIn=ttl_s,
            )
        fields = {name: str(value) for name, value in post["fields"].items()}
        return PresignedUpload(url=post["url"], fields=fields, expires_at=expires_at)

    def presigned_download(self, key: str, *, ttl_s: int, filename: str) -> str:
        params = {"Bucket": self.bucket, "Key": self._key(key), "ResponseContentDisposition": _attachment(filename)}
        with _s3_errors(key):
            return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)


@contextlib.contextmanager
def _s3_errors(key: str) -> Iterator[None]:
    """Translate boto errors into ours; the messages carry the error code only, never the request."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))
        if code in _NOT_FOUND_CODES:
            raise ObjectNotFound(f"no object {key}") from exc
        raise ObjectStoreError(f"object store request failed ({code})") from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise ObjectStoreError(f"object store unavailable ({type(exc).__name__})") from exc


def _attachment(filename: str) -> str:
    """A Content-Disposition that saves as ``filename``: an ASCII fallback plus the exact UTF-8 name."""
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# ---------------------------------------------------------------------------------------------------
# Streaming helpers
# ---------------------------------------------------------------------------------------------------


def _write_hashed(chunks: Iterable[bytes], dst: IO[bytes] | None, max_bytes: int | None) -> tuple[str, int]:
    """Copy ``chunks`` to ``dst`` (None: only count and hash), stopping past ``max_bytes``."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise ObjectTooLarge(max_bytes)
        digest.update(chunk)
        if dst is not None:
            try:
                dst.write(chunk)
            except OSError as exc:
                raise ObjectStoreError("could not write the file (storage error)") from exc
    return digest.hexdigest(), size


def _read_chunks(fh: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    while chunk := fh.read(chunk_size):
        yield chunk


def _closing_chunks(fh: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    with fh:
        yield from _read_chunks(fh, chunk_size)
