"""The object store: one behavioural suite run against the local store and S3 (moto's real HTTP server)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import httpx
import pytest
from pydantic import ValidationError
from s3_testing import REGION, SECRET, new_bucket

from flip_api.core.config import ConfigError, HubSettings
from flip_api.storage import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectTooLarge,
    S3ObjectStore,
    object_store_from_settings,
    validate_key,
)


@dataclass
class Backend:
    store: ObjectStore
    everything: Callable[[], list[str]]  # every object or temp file the backend holds, for leak checks


def _s3_backend(endpoint: str) -> Backend:
    bucket = new_bucket(endpoint)
    store = S3ObjectStore(bucket, prefix="hub", region=REGION, endpoint_url=endpoint)

    def everything() -> list[str]:
        listed = store.client.list_objects_v2(Bucket=bucket).get("Contents", [])
        uploads = store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return [item["Key"] for item in listed] + [f"multipart:{item['Key']}" for item in uploads]

    return Backend(store, everything)


def _local_backend(root: Path) -> Backend:
    return Backend(
        LocalObjectStore(root), lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    )


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return _local_backend(tmp_path / "objects")
    return _s3_backend(request.getfixturevalue("s3_endpoint"))


@pytest.fixture
def s3(s3_endpoint: str) -> Backend:
    return _s3_backend(s3_endpoint)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Both backends
# ---------------------------------------------------------------------------------------------------


def test_round_trip_put_stat_read_download_copy_delete(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    data = b"model weights " * 1000

    stored = store.put_stream("projects/p1/model.pt", iter([data[:5000], data[5000:]]), max_bytes=len(data))
    assert (stored.key, stored.size, stored.sha256) == ("projects/p1/model.pt", len(data), _sha(data))
    assert store.stat("projects/p1/model.pt") == len(data)

    chunks = list(store.open_chunks("projects/p1/model.pt", chunk_size=4096))
    assert b"".join(chunks) == data
    assert [len(chunk) <= 4096 for chunk in chunks] == [True] * len(chunks)
    assert len(chunks) >= 4

    target = tmp_path / "scan" / "copy.bin"
    target.parent.mkdir()
    assert store.download_to("projects/p1/model.pt", target) == stored
    assert target.read_bytes() == data

    store.copy("projects/p1/model.pt", "clean/p1/model.pt")
    store.delete("projects/p1/model.pt")
    assert store.stat("projects/p1/model.pt") is None
    assert store.stat("clean/p1/model.pt") == len(data)
    assert b"".join(store.open_chunks("clean/p1/model.pt")) == data

    store.delete("projects/p1/model.pt")  # idempotent
    store.delete("clean/p1/model.pt")
    assert backend.everything() == []


def test_put_file_hashes_and_caps(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "config.json"
    source.write_bytes(b'{"lr": 0.001}')
    stored = backend.store.put_file("a/config.json", source, max_bytes=100)
    assert (stored.size, stored.sha256) == (13, _sha(b'{"lr": 0.001}'))
    assert b"".join(backend.store.open_chunks("a/config.json")) == b'{"lr": 0.001}'

    with pytest.raises(ObjectTooLarge):
        backend.store.put_file("a/other.json", source, max_bytes=12)
    assert backend.store.stat("a/other.json") is None


def test_empty_object(backend: Backend) -> None:
    stored = backend.store.put_stream("empty.txt", iter([]), max_bytes=10)
    assert (stored.size, stored.sha256) == (0, _sha(b""))
    assert backend.store.stat("empty.txt") == 0
    assert b"".join(backend.store.open_chunks("empty.txt")) == b""


def test_max_bytes_is_enforced_while_streaming_and_leaves_nothing(backend: Backend) -> None:
    consumed = 0

    def endless() -> Iterator[bytes]:
        nonlocal consumed
        while True:
            consumed += 1
            yield b"x" * 4

    with pytest.raises(ObjectTooLarge) as refused:
        backend.store.put_stream("up/big.bin", endless(), max_bytes=10)
    assert refused.value.max_bytes == 10
    assert consumed == 3  # stopped at the first chunk past the cap, not at the end of the stream
    assert backend.store.stat("up/big.bin") is None
    assert backend.everything() == []

    # Exactly at the cap is fine.
    assert backend.store.put_stream("up/big.bin", iter([b"x" * 10]), max_bytes=10).size == 10


def test_writes_are_atomic(backend: Backend) -> None:
    store = backend.store
    store.put_stream("m/model.py", iter([b"version = 1\n"]), max_bytes=100)

    def replacement() -> Iterator[bytes]:
        yield b"version = 2\n"
        # Mid-write, readers still see the whole old object.
        assert store.stat("m/model.py") == len(b"version = 1\n")
        assert b"".join(store.open_chunks("m/model.py")) == b"version = 1\n"
        yield b"# more\n"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream("m/model.py", replacement(), max_bytes=100)
    assert b"".join(store.open_chunks("m/model.py")) == b"version = 1\n"

    store.put_stream("m/model.py", iter([b"version = 3\n"]), max_bytes=100)
    assert b"".join(store.open_chunks("m/model.py")) == b"version = 3\n"
    assert len(backend.everything()) == 1


def test_missing_objects(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    assert store.stat("no/such.pt") is None
    with pytest.raises(ObjectNotFound):
        store.open_chunks("no/such.pt")  # raised on opening, before the first chunk is asked for
    with pytest.raises(ObjectNotFound):
        store.download_to("no/such.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(ObjectNotFound):
        store.copy("no/such.pt", "elsewhere.pt")
    store.delete("no/such.pt")
    assert backend.everything() == []


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/./b",
    "a//b",
    "a/",
    ".",
    "a b",
    "a\\b",
    "a\nb",
    "modèle.pt",
    "a:b",
    "x" * 513,
    "x" * 256,  # one segment longer than a file name may be
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_refused(backend: Backend, key: str) -> None:
    store = backend.store
    with pytest.raises(ValueError, match="key"):
        validate_key(key)
    with pytest.raises(ValueError, match="key"):
        store.put_stream(key, iter([b"x"]), max_bytes=10)
    with pytest.raises(ValueError, match="key"):
        store.stat(key)
    with pytest.raises(ValueError, match="key"):
        store.delete(key)
    with pytest.raises(ValueError, match="key"):
        store.copy("fine", key)
    assert backend.everything() == []


@pytest.mark.parametrize(
    "key", ["a", "projects/3f2a/files/model-v1.2_final.PT", ".hidden", "/".join(["x" * 255, "y" * 254, "z"])]
)
def test_valid_keys_are_accepted(backend: Backend, key: str) -> None:
    assert validate_key(key) == key
    backend.store.put_stream(key, iter([b"ok"]), max_bytes=2)
    assert backend.store.stat(key) == 2


def test_local_store_keeps_objects_under_its_root_and_presigns_nothing(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put_stream("p/model.py", iter([b"pass\n"]), max_bytes=10)
    assert (tmp_path / "objects" / "p" / "model.py").read_bytes() == b"pass\n"
    assert store.presigned_upload("p/model.py", max_bytes=10, ttl_s=60) is None
    assert store.presigned_download("p/model.py", ttl_s=60, filename="model.py") is None


# ---------------------------------------------------------------------------------------------------
# S3 only: presigned URLs, error mapping
# ---------------------------------------------------------------------------------------------------


def test_presigned_post_uploads_within_the_cap(s3: Backend) -> None:
    store = s3.store
    before = datetime.now(UTC)
    upload = store.presigned_upload("quarantine/u1/model.pt", max_bytes=64, ttl_s=120)
    assert upload is not None
    assert before + timedelta(seconds=119) <= upload.expires_at <= datetime.now(UTC) + timedelta(seconds=121)

    response = httpx.post(upload.url, data=upload.fields, files={"file": ("model.pt", b"w" * 64)})
    assert response.status_code in (200, 204), response.text
    assert store.stat("quarantine/u1/model.pt") == 64
    assert b"".join(store.open_chunks("quarantine/u1/model.pt")) == b"w" * 64


def test_presigned_post_policy_caps_size_key_and_time(s3: Backend) -> None:
    """What S3 enforces on a browser's POST is the signed policy; moto's server stores whatever is
    posted, so the refusal of an oversized upload cannot be observed here: check the policy instead."""
    upload = s3.store.presigned_upload("quarantine/u2/model.pt", max_bytes=1000, ttl_s=60)
    assert upload is not None
    assert upload.fields["key"] == "hub/quarantine/u2/model.pt"
    assert upload.fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    policy = json.loads(base64.b64decode(upload.fields["policy"]))
    assert ["content-length-range", 0, 1000] in policy["conditions"]
    assert {"key": "hub/quarantine/u2/model.pt"} in policy["conditions"]
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert abs((expiration - upload.expires_at).total_seconds()) < 2
    assert SECRET not in json.dumps(upload.fields)


def test_presigned_get_downloads_as_an_attachment(s3: Backend) -> None:
    store = s3.store
    store.put_stream("clean/u3/weights.pt", iter([b"tensor bytes"]), max_bytes=100)
    url = store.presigned_download("clean/u3/weights.pt", ttl_s=60, filename='mödel "v2".pt')
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"tensor bytes"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="m_del _v2_.pt"')
    assert "filename*=UTF-8''m%C3%B6del%20%22v2%22.pt" in disposition


def test_s3_failures_become_safe_object_store_errors(s3_endpoint: str) -> None:
    store = S3ObjectStore("flip-no-such-bucket", region=REGION, endpoint_url=s3_endpoint)
    with pytest.raises(ObjectStoreError) as failure:
        store.put_stream("a.txt", iter([b"x"]), max_bytes=10)
    assert not isinstance(failure.value, ObjectNotFound)
    message = str(failure.value)
    assert "NoSuchBucket" in message
    for secret_or_address in (SECRET, "moto-access-key", s3_endpoint):
        assert secret_or_address not in message


# ---------------------------------------------------------------------------------------------------
# Settings and the factory
# ---------------------------------------------------------------------------------------------------


def test_factory_defaults_to_a_local_store_under_the_state_dir(tmp_path: Path) -> None:
    settings = HubSettings(FLIP_STATE_DIR=tmp_path / "state")
    assert settings.object_store == "local"
    assert settings.object_store_dir == (tmp_path / "state" / "objects").resolve()
    assert (settings.upload_max_bytes, settings.presign_ttl_s, settings.scan_stuck_s) == (512 << 20, 300, 600)
    store = object_store_from_settings(settings)
    assert isinstance(store, LocalObjectStore)
    assert store.root == settings.object_store_dir


def test_object_store_dir_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = HubSettings(FLIP_STATE_DIR=tmp_path / "state", FLIP_OBJECT_STORE_DIR="uploads")
    assert settings.object_store_dir == tmp_path.resolve() / "uploads"


def test_s3_needs_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="FLIP_S3_BUCKET"):
        HubSettings(FLIP_STATE_DIR=tmp_path, FLIP_OBJECT_STORE="s3")


@pytest.mark.parametrize(("name", "value"), [("FLIP_PRESIGN_TTL_S", 5), ("FLIP_UPLOAD_MAX_BYTES", 0)])
def test_limits_are_range_checked(tmp_path: Path, name: str, value: int) -> None:
    with pytest.raises(ValidationError):
        HubSettings.model_validate({"FLIP_STATE_DIR": tmp_path, name: value})


def test_factory_builds_a_working_s3_store(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = new_bucket(s3_endpoint)
    settings = HubSettings(
        FLIP_STATE_DIR=tmp_path,
        FLIP_OBJECT_STORE="s3",
        FLIP_S3_BUCKET=bucket,
        FLIP_S3_PREFIX="/hub-a/",
        FLIP_S3_REGION=REGION,
        FLIP_S3_ENDPOINT_URL=s3_endpoint,
    )
    store = object_store_from_settings(settings)
    assert isinstance(store, S3ObjectStore)
    store.put_stream("x/y.txt", iter([b"hi"]), max_bytes=2)
    assert (
        boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION).head_object(
            Bucket=bucket, Key="hub-a/x/y.txt"
        )["ContentLength"]
        == 2
    )

    bad_prefix = settings.model_copy(update={"s3_prefix": "../up"})
    with pytest.raises(ConfigError, match="FLIP_S3_PREFIX"):
        object_store_from_settings(bad_prefix)
