"""A job bundle: the researcher's files with FLIP's immutable Flower app template on top.

The researcher's files are copied first and the template's second, so a researcher file named like a
template file (``flip_server.py``, ``pyproject.toml``...) is replaced: the ServerApp and ClientApp are
always FLIP's. The bundle's sha256 covers every file's relative path and bytes, in path order, so the
same inputs always give the same digest and any changed byte, name or file gives another.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

TEMPLATE_DIR = Path(__file__).resolve().parent / "template"
_SKIPPED_DIRS = {"__pycache__"}


class BundleError(ValueError):
    """The bundle cannot be built: a bad file name, a missing file or an unusable output directory."""


@dataclass(frozen=True)
class Bundle:
    """A built bundle: the app directory to submit and its content digest."""

    path: Path
    sha256: str


def build_bundle(template: Path, user_files: Mapping[str, Path], out_dir: Path) -> Bundle:
    """Copy ``user_files`` (relative name -> source file), then ``template``, into ``out_dir``.

    ``out_dir`` must not exist or be empty. Names are relative POSIX paths without ``..``.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleError(f"{out_dir} is not empty")
    if not template.is_dir():
        raise BundleError(f"the template {template} is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, source in sorted(user_files.items()):
        if not source.is_file():
            raise BundleError(f"{name}: {source} is not a file")
        _copy(source, out_dir / _safe_relative(name))
    for source in _files(template):
        _copy(source, out_dir / source.relative_to(template))
    return Bundle(path=out_dir, sha256=bundle_sha256(out_dir))


def bundle_sha256(root: Path) -> str:
    """The digest of a directory: for each file in path order, its relative path and its bytes."""
    digest = hashlib.sha256()
    for path in sorted(_files(root), key=lambda p: p.relative_to(root).as_posix()):
        name = path.relative_to(root).as_posix().encode("utf-8")
        data = path.read_bytes()
        # Lengths first, so that no two different (path, bytes) sequences hash the same stream.
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not _SKIPPED_DIRS.intersection(p.relative_to(root).parts)
    ]


def _safe_relative(name: str) -> Path:
    pure = PurePosixPath(name)
    if (
        not name
        or pure.is_absolute()
        or "\\" in name
        or any(part in ("", ".", "..") or part in _SKIPPED_DIRS for part in pure.parts)
    ):
        raise BundleError(f"invalid file name in bundle: {name!r}")
    return Path(*pure.parts)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
