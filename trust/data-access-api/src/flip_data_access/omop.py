"""Running validated cohort SQL on the OMOP database: read-only transactions, a statement timeout, and
database errors reduced to safe categories before anything can repeat them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from flip_core.cohort import PERSON_COLUMN, CohortErrorCode

log = logging.getLogger(__name__)

_QUOTED = re.compile(r'"([^"]{1,128})"')


class CohortError(Exception):
    """A cohort request that cannot be answered, in a category safe to pass on (see ``CohortErrorCode``)."""

    def __init__(self, code: CohortErrorCode, detail: str, *, status: int = 422, retryable: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.retryable = retryable


def _named(exc: psycopg.Error, what: str) -> str:
    # Undefined table/column are the only database errors whose text is echoed, and then only the
    # identifier the researcher wrote themselves.
    primary = exc.diag.message_primary or ""
    match = _QUOTED.search(primary)
    return f"{what} {match.group(1)!r} does not exist at this trust" if match else f"unknown {what}"


def categorise(exc: BaseException) -> CohortError:
    """The safe category of a database failure; the original text stays in this trust's log only."""
    if isinstance(exc, CohortError):
        return exc
    if isinstance(exc, pg_errors.UndefinedTable):
        return CohortError(CohortErrorCode.UNKNOWN_TABLE, _named(exc, "table"))
    if isinstance(exc, pg_errors.UndefinedColumn):
        return CohortError(CohortErrorCode.UNKNOWN_COLUMN, _named(exc, "column"))
    if isinstance(exc, pg_errors.QueryCanceled):
        return CohortError(CohortErrorCode.QUERY_TIMEOUT, "the query ran longer than this trust allows", status=422)
    if isinstance(exc, psycopg.OperationalError | pg_errors.AdminShutdown | pg_errors.CannotConnectNow):
        return CohortError(
            CohortErrorCode.DATA_UNAVAILABLE, "this trust's OMOP database is unavailable", status=503, retryable=True
        )
    if isinstance(exc, psycopg.Error):
        log.warning("cohort query failed", extra={"sqlstate": exc.sqlstate, "error": type(exc).__name__})
        return CohortError(CohortErrorCode.QUERY_FAILED, "the query failed at this trust", status=422)
    log.error("unexpected error running a cohort query", exc_info=exc)
    return CohortError(CohortErrorCode.INTERNAL_ERROR, "internal error at this trust", status=500)


class OmopDatabase:
    """A small pool of read-only connections to the trust's OMOP database."""

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int,
        statement_timeout_s: float,
        connect_timeout_s: float = 10,
        work_mem_mb: int = 64,
    ) -> None:
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"application_name": "flip-data-access-api"},
            check=AsyncConnectionPool.check_connection,
        )
        self._timeout_ms = int(statement_timeout_s * 1000)
        self._connect_timeout_s = connect_timeout_s
        self._work_mem_kb = work_mem_mb * 1024

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def read_only(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection inside a read-only transaction with this service's statement timeout."""
        try:
            async with self._pool.connection(timeout=self._connect_timeout_s) as conn, conn.transaction():
                await conn.execute("SET TRANSACTION READ ONLY")
                await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self._timeout_ms)))
                # Cohort statistics group and hash a whole cohort at once: give them room so that they do
                # not spill to disk (PostgreSQL's default is 4 MB per operation).
                await conn.execute(sql.SQL("SET LOCAL work_mem = {}").format(sql.Literal(f"{self._work_mem_kb}kB")))
                yield conn
        except Exception as exc:
            raise categorise(exc) from exc

    async def ping(self) -> None:
        async with self.read_only() as conn:
            await conn.execute("SELECT 1")


async def output_columns(conn: psycopg.AsyncConnection[Any], cohort_sql: str) -> list[str]:
    """The cohort query's output column names (planned and run with ``LIMIT 0``: no rows are read)."""
    probe = sql.SQL("SELECT * FROM ({}) AS cohort LIMIT 0").format(sql.SQL(cohort_sql))
    cur = await conn.execute(probe)
    names = [d.name for d in cur.description or ()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CohortError(
            CohortErrorCode.INVALID_QUERY, f"output columns must have distinct names; repeated: {', '.join(duplicates)}"
        )
    if PERSON_COLUMN not in names:
        raise CohortError(
            CohortErrorCode.NO_PERSON_COLUMN,
            f"the query must return a {PERSON_COLUMN} column: counts are of distinct persons",
        )
    return names
