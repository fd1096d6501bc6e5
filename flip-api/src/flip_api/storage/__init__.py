"""Where the hub keeps files: an object store on local disk or in S3 (see :mod:`.objects`)."""

from flip_api.storage.objects import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectTooLarge,
    PresignedUpload,
    S3ObjectStore,
    StoredObject,
    object_store_from_settings,
    validate_key,
)

__all__ = [
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectTooLarge",
    "PresignedUpload",
    "S3ObjectStore",
    "StoredObject",
    "object_store_from_settings",
    "validate_key",
]
