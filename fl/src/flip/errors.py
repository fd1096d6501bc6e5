"""The errors the trainer SDK raises to researcher code."""

from __future__ import annotations


class TrainerDataError(RuntimeError):
    """The trust's data could not be read: the message says what the service answered or what is missing."""


class NotInJob(RuntimeError):
    """Neither a FLIP job nor local-dev mode is active, so there is no data to read."""
