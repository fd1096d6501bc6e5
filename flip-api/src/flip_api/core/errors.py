"""Application errors and the handlers that render every failure as ``{"detail", "code"}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from flip_core.contract import ErrorBody

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on: HTTP status, machine code and a human message."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers


class NotAuthenticated(ApiError):
    status_code = 401
    code = "not_authenticated"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class Unprocessable(ApiError):
    status_code = 422
    code = "validation_error"


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"


_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def _body(detail: str, code: str) -> dict[str, Any]:
    return ErrorBody(detail=detail, code=code).model_dump()


def _describe_validation(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return 400, "malformed_json", "request body is not valid JSON"
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "validation_error", "; ".join(parts) + more


# SQLSTATEs of failures that retrying the same request can cure: serialization failures and deadlocks
# (class 40) and lock timeouts.  Every other operational failure means the database is not reachable.
_BUSY_SQLSTATES = ("40", "55P03")
DATABASE_RETRY_AFTER_S = 5


def database_failure(exc: sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError) -> tuple[str, str]:
    """``(code, detail)`` for a database failure a client should retry: unreachable or momentarily busy."""
    if isinstance(exc, sa_exc.TimeoutError):
        return "database_busy", "the hub's database connections are all in use; retry shortly"
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None and sqlstate.startswith(_BUSY_SQLSTATES):
        return "database_busy", "the database could not complete the request (conflict or lock); retry shortly"
    return "database_unavailable", "the hub cannot reach its database; retry shortly"


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so that no response leaves the hub without the standard error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.detail, exc.code), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, detail = _describe_validation(exc)
        return JSONResponse(_body(detail, code), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(_body(detail, code), status_code=exc.status_code, headers=exc.headers)

    async def _database(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)
        code, detail = database_failure(exc)
        # No stack trace and no driver message in the body: the log carries the cause, once per failure.
        cause = type(getattr(exc, "orig", exc)).__name__
        log.warning("database failure answered with 503", extra={"code": code, "error": cause})
        return JSONResponse(_body(detail, code), status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})

    for failure in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
        app.add_exception_handler(failure, _database)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(_body("internal server error", "internal_error"), status_code=500)
