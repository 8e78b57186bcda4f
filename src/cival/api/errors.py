"""Renders every error as `{"error": "<stable_code>", "detail": "<what to fix>"}`.

Expected outcomes (CivalError, validation, unknown routes) are 4xx. Anything else is a bug: a 500 carrying the
request id, with the traceback logged and never sent to the client.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cival.core.exceptions import CivalError
from cival.core.logging import get_logger
from cival.database.types import DecimalPrecisionError

log = get_logger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",)) or "body"


async def _cival_error(_: Request, exc: Exception) -> JSONResponse:
    exc = cast(CivalError, exc)
    headers = exc.headers
    if exc.status_code == 401 and not headers:
        headers = {"WWW-Authenticate": "Bearer"}  # RFC 9110: every 401 names its scheme
    return JSONResponse(error_body(exc.code, exc.detail, **exc.extra), status_code=exc.status_code, headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)
    errors = [{"field": _loc(e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(error_body("validation_error", detail, errors=errors), status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _statement_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StatementError, exc)
    if isinstance(exc.orig, DecimalPrecisionError):
        return JSONResponse(error_body("decimal_precision", str(exc.orig)), status_code=422)
    return await _unexpected(request, exc)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database connection was lost or could not be made: 503, so clients retry (D40); anything else a bug."""
    exc = cast(DBAPIError, exc)
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        return _database_unavailable(request, exc.orig if exc.orig is not None else exc)
    return await _statement_error(request, exc)


async def _connection_refused(request: Request, exc: Exception) -> JSONResponse:
    """A connection that could not be made at all (the database is down or restarting: the pool's connect raises
    the socket's error as it is, for a session and a driver transaction alike): 503, as above."""
    return _database_unavailable(request, exc)


def _database_unavailable(request: Request, cause: BaseException) -> JSONResponse:
    log.warning("database unavailable", path=request.url.path, error=(str(cause).splitlines() or [""])[0][:200])
    return JSONResponse(
        error_body("database_unavailable", "the database is unreachable or restarting: retry in a moment"),
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _decimal_error(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body("decimal_precision", str(exc)), status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.error("unhandled error", path=request.url.path, request_id=request_id, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "an unexpected error occurred; quote the request id", request_id=request_id),
        status_code=500,
        headers={"X-Request-ID": request_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CivalError, _cival_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DecimalPrecisionError, _decimal_error)
    app.add_exception_handler(StatementError, _statement_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(ConnectionError, _connection_refused)
    app.add_exception_handler(Exception, _unexpected)
