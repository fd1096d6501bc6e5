"""The research image store: de-identified studies per project, each with a checksummed manifest.

Layout under the store's root::

    <project id>/<study key>/manifest.json      sha256 and size of every file below
    <project id>/<study key>/dicom/<sop>.dcm    de-identified instances
    <project id>/<study key>/nifti/<name>.nii.gz (+ .json sidecar), when converted
    <project id>/<study key>/mask/mask.nii.gz   the trust's segmentation label, when it has one

A study is prepared in a staging folder and moved into place in one rename, with its manifest already
written, so a reader sees a whole study or none.  Every path segment that comes from outside (project
id, study key, file name) is validated against a strict pattern before it touches the file system: a
request can never name a file outside the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
KINDS = ("dicom", "nifti", "mask")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnsafePath(ValueError):
    """A path segment that is not a plain, safe name (``..``, separators, control characters, ...)."""


class StudyNotInStore(LookupError):
    """No ready study under that key for that project."""


class DamagedStudy(RuntimeError):
    """A stored file no longer matches its manifest (it is not served)."""


def safe_segment(value: str) -> str:
    """``value`` if it is a plain file name of letters, digits, ``.``, ``_`` and ``-`` (not ``..``)."""
    if not _SEGMENT.fullmatch(value) or value in {".", ".."} or ".." in value:
        raise UnsafePath("not a safe name: use letters, digits, '.', '_' and '-' only")
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """Every file of a stored study with its size and sha256 (paths relative to the study folder)."""

    files: dict[str, tuple[int, str]]

    @classmethod
    def of(cls, folder: Path, known: Mapping[Path, tuple[int, str]] | None = None) -> Manifest:
        """Every file under ``folder``, hashed; ``known`` holds ``(size, sha256)`` of files just written.

        A file in ``known`` whose size on disk still matches is taken from it instead of being read again
        (its writer hashed the very bytes it wrote); any other file is read and hashed.
        """
        files: dict[str, tuple[int, str]] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != MANIFEST:
                size = path.stat().st_size
                given = known.get(path) if known else None
                digest = given[1] if given is not None and given[0] == size else _sha256(path)
                files[path.relative_to(folder).as_posix()] = (size, digest)
        return cls(files)

    def to_json(self) -> str:
        body = {name: {"bytes": size, "sha256": digest} for name, (size, digest) in self.files.items()}
        return json.dumps({"files": body}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)["files"]
        return cls({name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in body.items()})

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


class ImageStore:
    """De-identified studies of every project at this trust."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in root.glob(".staging-*"):  # left by a process that died mid-import
            shutil.rmtree(stale, ignore_errors=True)

    def _project(self, project_id: uuid.UUID) -> Path:
        return self.root / str(project_id)

    def study_dir(self, project_id: uuid.UUID, study_key: str) -> Path:
        return self._project(project_id) / safe_segment(study_key)

    def staging(self) -> Path:
        """A fresh folder to prepare one study in (same file system as the store, so the move is atomic)."""
        folder = self.root / f".staging-{uuid.uuid4().hex}"
        folder.mkdir(mode=0o700)
        return folder

    def commit(
        self,
        project_id: uuid.UUID,
        study_key: str,
        staged: Path,
        *,
        checksums: Mapping[Path, tuple[int, str]] | None = None,
    ) -> Manifest:
        """Write the manifest into ``staged`` and move it into place, replacing an earlier import of the study.

        ``checksums``: ``(size, sha256)`` of staged files, computed while they were written (see
        :meth:`Manifest.of`); files it does not list are read and hashed here.
        """
        target = self.study_dir(project_id, study_key)
        manifest = Manifest.of(staged, checksums)
        if not manifest.files:
            raise DamagedStudy("nothing to store: the study produced no files")
        with (staged / MANIFEST).open("w", encoding="utf-8") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if target.exists():
            old = self.root / f".staging-replaced-{uuid.uuid4().hex}"
            target.rename(old)
            staged.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staged.rename(target)
        return manifest

    def manifest(self, project_id: uuid.UUID, study_key: str) -> Manifest:
        path = self.study_dir(project_id, study_key) / MANIFEST
        try:
            return Manifest.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise StudyNotInStore("no such study in this project's images") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise DamagedStudy("the study's manifest is damaged") from exc

    def verify(self, project_id: uuid.UUID, study_key: str) -> Manifest:
        """The manifest, after checking every file against it (:class:`DamagedStudy` if one differs)."""
        manifest = self.manifest(project_id, study_key)
        folder = self.study_dir(project_id, study_key)
        if Manifest.of(folder) != manifest:
            raise DamagedStudy("a stored file no longer matches the study's manifest")
        return manifest

    def files(self, project_id: uuid.UUID, study_key: str, kind: str) -> list[Path]:
        """The study's files of one kind (``dicom``, ``nifti`` or ``mask``), as listed in its manifest."""
        if kind not in KINDS:
            raise UnsafePath(f"kind must be one of {', '.join(KINDS)}")
        manifest = self.manifest(project_id, study_key)
        folder = self.study_dir(project_id, study_key)
        return [folder / name for name in sorted(manifest.files) if name.startswith(f"{kind}/")]

    def file(self, project_id: uuid.UUID, study_key: str, relative: str) -> Path:
        """One listed file of a study; the name must be in the manifest (nothing else can be reached)."""
        parts = relative.split("/")
        for part in parts:
            safe_segment(part)
        manifest = self.manifest(project_id, study_key)
        if relative not in manifest.files:
            raise StudyNotInStore("no such file in the study")
        return self.study_dir(project_id, study_key).joinpath(*parts)

    def studies(self, project_id: uuid.UUID) -> list[str]:
        folder = self._project(project_id)
        if not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / MANIFEST).exists())

    def delete_project(self, project_id: uuid.UUID) -> int:
        """Remove every image of the project (first moved aside, so readers never see half); returns studies."""
        folder = self._project(project_id)
        if not folder.exists():
            return 0
        count = len(self.studies(project_id))
        doomed = self.root / f".staging-deleted-{uuid.uuid4().hex}"
        folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return count
