"""Secrets a trust service creates once in its state folder and keeps for good (0600, never sent anywhere)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class StateSecretError(Exception):
    """The state folder cannot be used, or the secret in it is damaged; the message names the fix."""


def state_secret(path: Path, nbytes: int) -> bytes:
    """The secret in ``path`` (hex text), created with ``nbytes`` random bytes the first time.

    Creation is exclusive, so two processes starting together agree on one secret.  A damaged file is
    an error, never replaced: the secret's whole value is that it does not change.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(secrets.token_hex(nbytes) + "\n")
                out.flush()
                os.fsync(out.fileno())
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise StateSecretError(f"cannot use the state folder {path.parent}: {exc.strerror or exc}") from exc
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != nbytes:
        raise StateSecretError(f"{path} is damaged; restore it from backup (do not replace it)")
    return value
