"""Every failure leaves the API as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.engine.base import EngineError, EngineOverloadedError
from server.model_holder import ModelNotReadyError

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_exception(exc: Exception) -> APIError:
    """The API error a failure maps to; anything unforeseen is a 500 that names no internals."""
    match exc:
        case APIError():
            return exc
        case EngineOverloadedError():
            return APIError(
                429, str(exc), type="rate_limit_error", code=exc.code, headers={"Retry-After": str(exc.retry_after_s)}
            )
        case EngineError():
            return APIError(400, str(exc), param=exc.param, code=exc.code)
        case ModelNotReadyError():
            return APIError(503, f"the model is not ready: {exc}", type="service_unavailable", code="model_not_ready")
        case _:
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


def install_error_handlers(app: FastAPI) -> None:
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers).response()

    async def on_any(_: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).response()

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for kind in (APIError, EngineError, ModelNotReadyError, Exception):
        app.add_exception_handler(kind, on_any)
