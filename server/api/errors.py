"""Every failure leaves the API as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import APIError, ForeseenError, known_error
from server.protocol.base import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)


def body(error: APIError) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code))


def response(error: APIError) -> JSONResponse:
    return JSONResponse(body(error).model_dump(), status_code=error.status, headers=error.headers)


def from_exception(exc: Exception) -> APIError:
    """The API error a failure maps to; anything unforeseen is a 500 that names no internals."""
    known = known_error(exc)
    if known is not None:
        return known
    log.exception("unhandled error", exc_info=exc)
    return APIError(500, "internal error while handling the request", type="server_error")


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    # Union members add their type name to the location ("stop", "str"); the client's field is the first element.
    param = loc[0] if loc else None
    where = ".".join(loc) if loc else "body"
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "missing":
        return APIError(400, f"missing required parameter: {where}", param=param, code="missing_required_parameter")
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {where}", param=param)
    return APIError(400, f"invalid value for {where}: {message}", param=param, code="invalid_value")


def too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server accepts ({max_bytes} bytes, GGUFSTACK_MAX_REQUEST_BYTES)",
        code="request_too_large",
    )


class RequestTooLargeError(StarletteHTTPException):
    """Raised while a body is read, once it passes the limit: an HTTPException, so the route's body parsing passes
    it on to the error handlers instead of calling it a malformed body."""

    def __init__(self, max_bytes: int) -> None:
        self.error = too_large(max_bytes)
        super().__init__(413, self.error.message)


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types every handler as taking any Exception; each is registered for the class it narrows to.
    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):
            return response(from_exception(exc))
        return response(_validation_error(exc))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):
            return response(from_exception(exc))
        if isinstance(exc, RequestTooLargeError):
            return response(exc.error)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return response(APIError(exc.status_code, str(exc.detail), type=kind, headers=dict(exc.headers or {})))

    async def on_any(_: Request, exc: Exception) -> JSONResponse:
        return response(from_exception(exc))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for kind in (APIError, ForeseenError, Exception):
        app.add_exception_handler(kind, on_any)
