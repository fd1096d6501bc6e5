"""Exit codes of the ``flip`` command and the exceptions that carry them.

Every failure leaves through :class:`CliError` (or click's own usage errors, exit 2), so the exit code
table in :mod:`flip_cli.main` is the whole truth about what a script calling ``flip`` can see.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

import click
import psycopg
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError

from flip_api.core.config import ConfigError
from flip_api.core.errors import ApiError, Conflict, NotFound, Unprocessable


class ExitCode(IntEnum):
    """The documented exit statuses of every ``flip`` sub-command."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CONFIG = 3
    AUDIT_BROKEN = 4
    CONFLICT = 5


EXIT_CODE_TABLE = """\
\b
Exit codes:
  0  success
  1  failure at runtime (a demo phase failed, the hub stopped unexpectedly, interrupted)
  2  usage error (bad or missing option, invalid value, weak password)
  3  configuration error (bad or missing settings, unreachable or uninitialised database, bad kit)
  4  audit chain verification failed (the log was tampered with)
  5  conflict or not found on an admin action (duplicate trust or email, unknown user or trust,
     kit file already exists)"""


class CliError(click.ClickException):
    """A failure with a message for the operator; the subclass decides the exit code (1 here)."""

    exit_code = ExitCode.FAILURE


class ConfigurationError(CliError):
    """Bad or missing settings, an unreachable or uninitialised database, a bad kit (exit 3)."""

    exit_code = ExitCode.CONFIG


class AuditChainBroken(CliError):
    """The audit log's hash chain does not verify (exit 4)."""

    exit_code = ExitCode.AUDIT_BROKEN


class ConflictOrNotFound(CliError):
    """An admin action hit a duplicate or an unknown user/trust, or an existing kit file (exit 5)."""

    exit_code = ExitCode.CONFLICT


def config_error(message: str) -> ConfigurationError:
    return ConfigurationError(message)


def conflict(message: str) -> ConflictOrNotFound:
    return ConflictOrNotFound(message)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn hub service and database exceptions into :class:`CliError` with the right exit code."""
    try:
        yield
    except CliError:
        raise
    except (Conflict, NotFound) as exc:
        raise conflict(f"{exc.detail} ({exc.code})") from exc
    except Unprocessable as exc:
        raise click.UsageError(f"{exc.detail} ({exc.code})") from exc
    except ApiError as exc:
        raise CliError(f"{exc.detail} ({exc.code})") from exc
    except (ConfigError, ValidationError) as exc:
        raise config_error(f"invalid configuration: {exc}") from exc
    except (OperationalError, psycopg.OperationalError) as exc:
        raise config_error(f"cannot reach the database (check DATABASE_URL): {_first_line(exc)}") from exc
    except ProgrammingError as exc:
        raise config_error(
            "the database is not initialised (start the hub or run `flip admin create-user` once): " + _first_line(exc)
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
