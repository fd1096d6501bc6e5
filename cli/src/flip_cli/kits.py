"""Writing trust kits: the only copy of a trust's keys, so the file is private and never half-written."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flip_core.contract import TrustKit

KIT_FILE_MODE = 0o600


class KitExistsError(FileExistsError):
    """The kit file is already there and overwriting was not asked for."""


def write_kit(path: Path, kit: TrustKit, *, overwrite: bool = False) -> Path:
    """Write ``kit`` as an env file with mode 0600, atomically; returns the absolute path.

    The content goes to a private temporary file in the same directory first, then is linked into
    place (refusing an existing file) or, with ``overwrite``, renamed over it.  Readers therefore see
    either no kit or a complete one, and the keys are never readable by other users at any moment.
    """
    path = path.expanduser().absolute()
    if not overwrite and path.exists():
        raise KitExistsError(f"{path} already exists (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KIT_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(kit.to_env())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, KIT_FILE_MODE)  # the umask may have narrowed it further; make it exactly 0600
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise KitExistsError(f"{path} already exists (use --force to replace it)") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path
