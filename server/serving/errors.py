"""The error a request ends with, as the client sees it: an HTTP status and OpenAI's error fields.

Stages raise it; `known_error` maps the engine's and the model holder's failures onto it, so the API's error JSON and
the audit row's status agree; `server/api/errors.py` turns every failure into OpenAI's error JSON.
"""

from __future__ import annotations

from server.engine.base import EngineClosedError, EngineError, EngineOverloadedError
from server.lifecycle.holder import ModelNotReadyError, ServerDrainingError


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


def known_error(exc: BaseException) -> APIError | None:
    """The API error a foreseen failure maps to; None for anything else (a 500)."""
    match exc:
        case APIError():
            return exc
        case EngineOverloadedError():
            return APIError(
                429, str(exc), type="rate_limit_error", code=exc.code, headers={"Retry-After": str(exc.retry_after_s)}
            )
        case EngineClosedError():
            return APIError(503, str(exc), type="service_unavailable", code="server_shutting_down")
        case EngineError():
            return APIError(400, str(exc), param=exc.param, code=exc.code)
        case ServerDrainingError():
            return APIError(
                503,
                str(exc),
                type="service_unavailable",
                code="server_shutting_down",
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        case ModelNotReadyError():
            return APIError(503, f"the model is not ready: {exc}", type="service_unavailable", code="model_not_ready")
    return None
