"""Inside a job: the trust's own data-access-api and imaging-api, called with the trainer key.

The SDK talks only to the two URLs the trust set on its SuperNode (``FLIP_DATA_ACCESS_URL``,
``FLIP_IMAGING_URL``), never to the hub, and only with the trainer key (``X-FLIP-Trainer-Key``), which
the services accept on their row-level read routes and nowhere else.  Proxy settings in the
environment are ignored, so the key never leaves for a proxy.

Images are cached under ``<cache>/<project>/<accession>/<kind>/<name>``: a cached file whose sha256
matches the listing is revalidated with ``If-None-Match`` (one round trip, no body); every download is
checked against the listed sha256 and size before it is moved into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from flip.context import ENV_DATA_ACCESS_URL, ENV_IMAGING_URL, ENV_TRAINER_CACHE, ENV_TRAINER_KEY, JobStep
from flip.errors import TrainerDataError
from flip_core.contract import TRAINER_KEY_HEADER

if TYPE_CHECKING:
    import pandas as pd

TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=10.0)
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def _client(step: JobStep) -> httpx.Client:
    if step.trainer_key is None:
        raise TrainerDataError(f"{ENV_TRAINER_KEY} is not set on this trust's SuperNode: ask the trust to set it")
    return httpx.Client(
        headers={TRAINER_KEY_HEADER: step.trainer_key}, timeout=TIMEOUT, follow_redirects=False, trust_env=False
    )


def _base(url: str | None, variable: str, service: str) -> str:
    if url is None:
        raise TrainerDataError(f"{variable} is not set on this trust's SuperNode: the {service} cannot be reached")
    return url.rstrip("/")


def _project(step: JobStep) -> str:
    if not step.context.project_id:
        raise TrainerDataError("this job names no project (its run config has no project_id)")
    return step.context.project_id


def _refusal(service: str, response: httpx.Response) -> str:
    """``the <service> answered <status> (<code>): <detail>`` from the services' error body."""
    code, detail = "", response.reason_phrase
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code", ""))
        detail = str(body.get("detail", detail))
    return f"the {service} answered {response.status_code}{f' ({code})' if code else ''}: {detail}"


def _send(client: httpx.Client, service: str, request: httpx.Request) -> httpx.Response:
    try:
        return client.send(request)
    except httpx.HTTPError as exc:
        raise TrainerDataError(f"cannot reach the {service} at {request.url.host}: {exc}") from exc


def fetch_dataframe(step: JobStep, columns: list[str] | None) -> pd.DataFrame:
    """The project's frozen cohort at this trust (``POST /cohort/dataframe``), columns in the service's order."""
    import pandas as pd

    service = "data-access-api"
    base = _base(step.context.data_access_url, ENV_DATA_ACCESS_URL, service)
    body = {"project_id": _project(step), "columns": columns}
    with _client(step) as client:
        response = _send(client, service, client.build_request("POST", f"{base}/cohort/dataframe", json=body))
        if response.status_code != 200:
            raise TrainerDataError(_refusal(service, response))
        payload: Any = response.json()
    table = payload.get("columns") if isinstance(payload, dict) else None
    if not isinstance(table, dict) or not all(isinstance(values, list) for values in table.values()):
        raise TrainerDataError(f"the {service} answered a malformed dataframe")
    return pd.DataFrame({name: values for name, values in table.items()})


def cache_root(step: JobStep) -> Path:
    """``FLIP_TRAINER_CACHE``, else a folder of this user's in the temporary folder (private to them)."""
    root = step.cache_dir or Path(tempfile.gettempdir()) / f"flip-trainer-cache-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = root.stat().st_uid
    except OSError as exc:
        raise TrainerDataError(f"cannot use the image cache {root}: {exc.strerror or exc}") from exc
    if owner != os.getuid():
        raise TrainerDataError(f"the image cache {root} belongs to another user: set {ENV_TRAINER_CACHE}")
    return root


def _folder_name(value: str) -> str:
    """``value`` when it is a plain file name, else a stable name derived from it."""
    if _SEGMENT.fullmatch(value) and ".." not in value:
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:32]


def _listed(entry: object) -> tuple[str, int, str]:
    if isinstance(entry, dict):
        name, size, digest = entry.get("name"), entry.get("bytes"), entry.get("sha256")
        if (
            isinstance(name, str)
            and all(_SEGMENT.fullmatch(part) and ".." not in part for part in name.split("/"))
            and isinstance(size, int)
            and isinstance(digest, str)
            and _SHA256.fullmatch(digest)
        ):
            return name, size, digest
    raise TrainerDataError(f"the imaging-api listed a file this SDK will not write: {entry!r}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_images(step: JobStep, accession: str, kind: str) -> list[Path]:
    """The study's files of ``kind`` in the local cache, downloaded or revalidated, in listing order."""
    service = "imaging-api"
    base = _base(step.context.imaging_url, ENV_IMAGING_URL, service)
    project = _project(step)
    study_url = f"{base}/imaging/projects/{quote(project, safe='')}/studies/{quote(accession, safe='')}/{kind}"
    with _client(step) as client:
        response = _send(client, service, client.build_request("GET", study_url))
        if response.status_code == 404:
            raise TrainerDataError(
                f"study {accession!r} is not available to project {project} at trust {step.context.trust} (not "
                f"imported, or not in this project's cohort): {_refusal(service, response)}"
            )
        if response.status_code != 200:
            raise TrainerDataError(_refusal(service, response))
        listing: Any = response.json()
        entries = listing.get("files") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            raise TrainerDataError(f"the {service} answered a malformed file listing")
        folder = cache_root(step) / _folder_name(project) / _folder_name(accession) / kind
        paths = []
        for entry in entries:
            name, size, digest = _listed(entry)
            target = folder.joinpath(*name.split("/"))
            file_url = f"{study_url}/{quote(name, safe='/')}"
            _fetch_file(client, service, file_url, target, size, digest)
            paths.append(target)
    return paths


def _fetch_file(client: httpx.Client, service: str, url: str, target: Path, size: int, digest: str) -> None:
    """Make ``target`` hold the listed file: kept when the server confirms the cached copy, else downloaded."""
    headers = {}
    if target.is_file() and target.stat().st_size == size and _sha256(target) == digest:
        headers["If-None-Match"] = f'"{digest}"'
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    request = client.build_request("GET", url, headers=headers)
    try:
        response = client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise TrainerDataError(f"cannot reach the {service} at {request.url.host}: {exc}") from exc
    try:
        if response.status_code == 304 and headers:
            return
        if response.status_code != 200:
            response.read()
            raise TrainerDataError(_refusal(service, response))
        _download(response, target, size, digest)
    except httpx.HTTPError as exc:
        raise TrainerDataError(f"downloading {target.name} from the {service} failed: {exc}") from exc
    finally:
        response.close()


def _download(response: httpx.Response, target: Path, size: int, digest: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        hasher, written = hashlib.sha256(), 0
        with os.fdopen(handle, "wb") as f:
            for chunk in response.iter_bytes(_CHUNK):
                hasher.update(chunk)
                written += len(chunk)
                f.write(chunk)
        if written != size or hasher.hexdigest() != digest:
            raise TrainerDataError(
                f"{target.name} arrived damaged ({written} bytes, sha256 {hasher.hexdigest()[:12]}...; "
                f"the listing says {size} bytes, sha256 {digest[:12]}...)"
            )
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
